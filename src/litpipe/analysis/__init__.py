"""The analyze stage's parts that depend on the task (stages/analyze.py runs them)."""

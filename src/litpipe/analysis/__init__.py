"""The analyze stage's parts (stages/analyze.py runs them): regression's diagnostics, a table's rows beside them."""

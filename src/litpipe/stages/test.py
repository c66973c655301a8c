"""test: a fresh process loads models/best.ckpt and evaluates the test split."""

import logging

from litpipe import paths
from litpipe.config import Params
from litpipe.data.prepared import PreparedData, load_meta
from litpipe.io import write_json
from litpipe.models.classifier import Classifier
from litpipe.training import make_trainer, seed_everything

log = logging.getLogger(__name__)


def run(params: Params) -> None:
    seed_everything(params.seed)
    model = Classifier.from_checkpoint(paths.BEST_CKPT)
    trainer = make_trainer(params)
    (result,) = trainer.test(model, datamodule=PreparedData.from_params(params), verbose=False)
    metrics = {"accuracy": result["test/acc"], "loss": result["test/loss"], "samples": load_meta()["sizes"]["test"]}
    write_json(paths.TEST_METRICS, metrics)
    log.info("test: accuracy %.4f, loss %.4f on %d samples", metrics["accuracy"], metrics["loss"], metrics["samples"])

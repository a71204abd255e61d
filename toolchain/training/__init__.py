"""Training: `train(TrainRequest(...))` writes a run folder; `load_run(RUN)` reads one back.

    from toolchain.training import TrainRequest, train, load_run
    metrics = train(TrainRequest(config="examples/configs/fmnist_routed.json",
                                 data="fashion-mnist", out="runs/fmnist_routed", epochs=3))
    cfg, model, meta = load_run("runs/fmnist_routed", batch_size=1)

Importing this package does not import TensorFlow.
"""
from toolchain.training.runs import load_run, partial_dir, read_run_metadata
from toolchain.training.trainer import TrainRequest, prepare, train

__all__ = ["TrainRequest", "train", "prepare", "load_run", "read_run_metadata", "partial_dir"]

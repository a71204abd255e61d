"""A per-epoch progress bar on stderr for keras fit()."""
import sys

import tf_keras as keras


class EpochProgressBar(keras.callbacks.Callback):
    """tqdm bar over one epoch's steps showing the running loss and accuracy.

    Example:
        >>> model.fit(ds, epochs=1, verbose=0,  # doctest: +SKIP
        ...           callbacks=[EpochProgressBar(steps=430, description="epoch 1/3")])
    """

    def __init__(self, steps, description):
        super().__init__()
        self.steps = int(steps)
        self.description = description
        self._bar = None

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm import tqdm

        self._bar = tqdm(total=self.steps, desc=self.description, unit="step", file=sys.stderr,
                         dynamic_ncols=True, leave=False, disable=None)

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is None:
            return
        self._bar.update(1)
        if logs and batch % 10 == 0:
            self._bar.set_postfix(loss=f"{logs.get('loss', 0.0):.3f}",
                                  acc=f"{logs.get('accuracy', 0.0):.3f}", refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

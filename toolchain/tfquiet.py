"""Import TensorFlow without its C++ start-up chatter on stderr.

TensorFlow's native logging (absl "InitializeLog", oneDNN, cudart, cuInit lines) is written to
file descriptor 2 before TF_CPP_MIN_LOG_LEVEL takes effect, so a user's one-line error would be
buried under it. We point fd 2 at a temp file while TensorFlow loads and initialises its devices,
and replay the text only if the import fails.
"""
import os
import sys
import tempfile


def import_tensorflow_quietly() -> None:
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # triggers the cuInit message now, not later
        except BaseException:
            os.dup2(saved_fd, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)

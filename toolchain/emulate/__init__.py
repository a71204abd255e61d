"""Run firmware and talk the evaluation protocol: QEMU, Renode and real boards share one path.

    link = open_qemu(elf, "mps2-an386")          # or open_renode(...), open_serial_port("/dev/ttyACM0")
    with Session(link) as session:               # the session closes the link, reaping the emulator
        hello = session.hello()
        result = session.infer(image_int8)

`toolchain.emulate.evaluation` runs a whole evaluation (images, host reference, report).
"""
from toolchain.emulate.link import Link
from toolchain.emulate.process import EmulatorProcess, reap_all
from toolchain.emulate.session import DeviceError, InferResult, Session

__all__ = ["DeviceError", "EmulatorProcess", "InferResult", "Link", "Session", "reap_all"]

"""Full-test-split int8 measurement: float vs PTQ int8 vs QAT int8 on Fashion-MNIST (10,000 images).

    .venv/bin/python benchmarks/int8_fmnist.py RUN WORKDIR [--epochs 1] [--crosscheck 50]

RUN is a finished `routevit train` run of examples/configs/fmnist_routed.json. Writes
WORKDIR/qat (QRUN), WORKDIR/exp (EXP with baselines/ptq) and WORKDIR/result.json; prints the
table. Also cross-checks the host reference against tf.lite.Interpreter on the first N images.
"""
import argparse
import json
import sys
from pathlib import Path

import toolchain  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("workdir")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--crosscheck", type=int, default=50)
    args = parser.parse_args()
    from quantization.qrun import quantize_run
    from toolchain.data import load_dataset
    from toolchain.export import export
    from toolchain.hostref import HostReference
    from toolchain.hostref.crosscheck import crosscheck
    from toolchain.hostref.evaluate import evaluate_host, format_table

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    qat = quantize_run(args.run, "qat", work / "qat", epochs=args.epochs)
    export(work / "qat", work / "exp")
    result = evaluate_host(work / "exp", "fashion-mnist")
    result["qat_fake_quant_test_accuracy"] = qat["qat_test_accuracy"]
    ref = HostReference(work / "exp")
    pixels, _ = load_dataset("fashion-mnist").numpy_images("test", args.crosscheck, image_size=32, channels=1)
    images = [ref.quantize_pixels(p) for p in pixels]
    result["crosscheck"] = {kind: [{k: v for k, v in seg.items() if k != "ops"} for seg in
                                   crosscheck(work / "exp", images, reference=kind == "reference")]
                            for kind in ("builtin", "reference")}
    (work / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result), file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

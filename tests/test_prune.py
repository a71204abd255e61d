"""`routevit prune`: a site's experts counted on the int8 host reference, the rest dropped, a
smaller export that the host reference (and so generate/build) takes like any other."""
import json

from conftest import error_lines, run_routevit


def test_prune_keeps_the_most_chosen_experts_and_writes_a_smaller_valid_export(fmnist_routed_export, tmp_path):
    from toolchain.hostref import HostReference
    from toolchain.plan import read_plan

    out = tmp_path / "site"
    result = run_routevit("prune", fmnist_routed_export, "--data", "fashion-mnist", "--classes",
                          "Sandal,Sneaker,Ankle boot", "--keep", "2", "--count-images", "60",
                          "--eval-limit", "60", "--out", out, "--json", timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    original = read_plan(fmnist_routed_export)
    pruned = read_plan(out)  # validated: segment files, ops, tensors, routing sources
    assert report["experts_before"] == original.routed_layers[0].num_experts == 4
    assert report["experts_after"] == 2
    for layer, before, after in zip(report["layers"], original.routed_layers, pruned.routed_layers):
        assert after.num_experts == 2
        # The kept experts are the two chosen most (ties: the lower index).
        order = sorted(range(4), key=lambda e: (-layer["choices"][e], e))
        assert layer["kept"] == sorted(order[:2])
        assert sum(layer["choices"]) == 60 * 16 * before.top_k  # every patch of every image counted
        # Capacity re-derived for 2 experts from the same capacity factor: ceil(1.25 * 16 / 2).
        assert after.capacity == layer["capacity_after"] == 10 and before.capacity == 5
    assert report["segment_bytes_after"] < report["segment_bytes_before"]
    assert sum(s.bytes for s in pruned.segments) == report["segment_bytes_after"]
    assert pruned.raw["generated_by"]["kept_experts"] == [layer["kept"] for layer in report["layers"]]
    ref = HostReference(out)
    image = ref.quantize_pixels(__import__("numpy").zeros(pruned.input.shape[1:], "uint8"))
    routing = ref.run(image).routing
    assert [len(r.counts) for r in routing] == [2, 2]
    assert 0.0 <= report["site_top1"]["after"] <= 1.0 and report["test_images"] == 60
    assert (out / "reference" / "float_weights.h5").is_file() and (out / "prune.json").is_file()


def test_prune_refuses_bad_input_in_one_line(fmnist_routed_export, tmp_path):
    same = run_routevit("prune", fmnist_routed_export, "--data", "fashion-mnist", "--out", fmnist_routed_export)
    assert same.returncode == 2 and len(error_lines(same.stderr)) == 1
    assert "is EXP itself" in same.stderr
    bad = run_routevit("prune", fmnist_routed_export, "--data", "fashion-mnist", "--classes", "Penguin",
                       "--out", tmp_path / "x")
    assert bad.returncode == 2 and "not a class of the dataset" in bad.stderr
    assert len(error_lines(bad.stderr)) == 1 and not (tmp_path / "x").exists()

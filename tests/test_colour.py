"""The colour check beside FID (ddpmkit.fid.colour): numbers against numpy, streaming, the cache,
the `ddpmkit fid` table and JSON, and the training-time FID log."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ddpmkit.errors import DdpmkitError
from ddpmkit.fid import ColourAccumulator, ColourStats, colour_stats, source_colour, synthetic_source
from ddpmkit.fid.colour import compare, summary

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Matrix is singular")


def _numpy_colour(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x: (N, 3, H, W) uint8 -> per-channel mean, std, saturated fraction, by plain numpy."""
    per_channel = x.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
    return per_channel.mean(axis=1), per_channel.std(axis=1), ((per_channel == 0) | (per_channel == 255)).mean(axis=1)


def test_known_array_gives_exact_numbers():
    x = np.zeros((2, 3, 2, 2), dtype=np.uint8)
    x[:, 0] = 255  # red all saturated at 255: mean 255, std 0
    x[:, 1] = [[0, 10], [20, 30]]  # green: one of four values at 0
    x[0, 2], x[1, 2] = 100, 200  # blue: half 100, half 200: mean 150, std 50, none saturated
    c = colour_stats([torch.from_numpy(x)])
    assert c.n == 2
    assert c.mean == pytest.approx((255.0, 15.0, 150.0))
    assert c.std == pytest.approx((0.0, np.std([0, 10, 20, 30]), 50.0))
    assert c.saturated == pytest.approx((1.0, 0.25, 0.0))
    assert c.saturated_all == pytest.approx(1.25 / 3)


def test_streaming_over_uneven_batches_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (23, 3, 7, 5), dtype=np.uint8)
    x[:4, 1] = 0  # enough saturated values to matter
    x[10:12] = 255
    mean, std, sat = _numpy_colour(x)
    acc = ColourAccumulator()
    for lo, hi in ((0, 1), (1, 9), (9, 9), (9, 20), (20, 23)):  # an empty batch included
        acc.update(torch.from_numpy(x[lo:hi]))
    c = acc.result()
    assert c.n == 23
    np.testing.assert_allclose(c.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(c.std, std, rtol=1e-9)
    np.testing.assert_allclose(c.saturated, sat, rtol=1e-12)
    # the same images in one batch: the same numbers
    assert colour_stats([torch.from_numpy(x)]) == c


def test_tap_passes_batches_through_and_stops_at_the_limit():
    batches = [torch.full((4, 3, 2, 2), v, dtype=torch.uint8) for v in (0, 100, 255)]
    acc = ColourAccumulator()
    seen = list(acc.tap(iter(batches), limit=6))
    assert [len(b) for b in seen] == [4, 2] and acc.n == 6
    assert acc.result().mean == pytest.approx((100 / 3,) * 3)  # four at 0, two at 100
    assert acc.result().saturated == pytest.approx((4 / 6,) * 3)


def test_bad_input_and_no_images_are_one_line_errors():
    with pytest.raises(DdpmkitError, match="uint8"):
        ColourAccumulator().update(torch.zeros(1, 3, 2, 2))
    with pytest.raises(DdpmkitError, match="no images"):
        ColourAccumulator().result()
    with pytest.raises(DdpmkitError, match="not colour statistics"):
        ColourStats.from_dict({"n": 1})


def test_json_form_round_trips_and_summary_names_both_sides():
    a = ColourStats(5, (1.0, 2.0, 3.0), (10.0, 20.0, 30.0), (0.1, 0.2, 0.3))
    b = ColourStats.from_dict(json.loads(json.dumps(a.to_dict())))
    assert b == a
    d = compare(a, None)
    assert d["reference"] is None and d["samples"]["saturated_all"] == pytest.approx(0.2)
    assert summary(a, a) == "saturated 20.0% (data 20.0%), std 20 (data 20)"


def test_source_colour_is_cached_beside_the_fid_statistics(tmp_path):
    src = synthetic_source(6, 16, seed=3)
    expected = _numpy_colour(torch.cat(list(src.read(4))).numpy())
    c, path, reused = source_colour(src, tmp_path)
    assert not reused and path is not None and path.parent == tmp_path and path.name.startswith("colour-")
    np.testing.assert_allclose(c.mean, expected[0])
    np.testing.assert_allclose(c.saturated, expected[2])
    again, path2, reused = source_colour(src, tmp_path)
    assert reused and path2 == path and again == c
    # another source (other seed): another file, never the first one's numbers
    other, path3, reused = source_colour(synthetic_source(6, 16, seed=4), tmp_path)
    assert not reused and path3 != path and other != c
    # a damaged cache file is computed again
    path.write_text("{not json")
    fixed, _, reused = source_colour(src, tmp_path)
    assert not reused and fixed == c
    # the same images under another label (a cache prepared again: a new name, the same pixels): found by key
    from dataclasses import replace

    renamed, path4, reused = source_colour(replace(src, label="synthetic-renamed"), tmp_path)
    assert reused and path4 == path and renamed == c


@pytest.mark.slow
@pytest.mark.fid_weights
def test_fid_cli_prints_the_colour_table_and_writes_it_to_json(tmp_path):
    import typer

    from ddpmkit.cli.fid_cmd import fid

    app = typer.Typer()
    app.command()(fid)
    folders = {}
    for name, value in (("white", 255), ("grey", 128)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        rng = np.random.default_rng(len(name))
        for i in range(3):
            img = rng.integers(100, 156, (16, 16, 3), dtype=np.uint8)
            img[: 4 * (name == "white") + 1] = value  # rows at `value`: white ones are saturated
            Image.fromarray(img).save(folders[name] / f"{i}.png")
    out = tmp_path / "fid.json"
    args = [str(folders["white"]), str(folders["grey"]), "--device", "cpu", "--set",
            f"data.cache_dir={tmp_path / 'cache'}", "--out-json", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "Colour" in r.output and "saturated" in r.output and "SOURCE" in r.output and "REFERENCE" in r.output
    result = json.loads(out.read_text())
    samples, reference = result["colour"]["samples"], result["colour"]["reference"]
    assert samples["n"] == 3 and reference["n"] == 3
    assert samples["saturated_all"] == pytest.approx(5 / 16)  # five of sixteen rows at 255
    assert reference["saturated_all"] == 0.0
    assert set(samples) == {"n", "mean", "std", "saturated", "saturated_all"} and len(samples["std"]) == 3
    assert f"{100 * 5 / 16:.2f}%" in r.output
    assert list((tmp_path / "cache" / "fid").glob("colour-*.json"))  # the reference's, beside its FID stats


@pytest.mark.slow
@pytest.mark.fid_weights
def test_training_fid_monitor_logs_colour(tmp_path):
    from conftest import tiny
    from ddpmkit.data.synthetic import make_faces
    from ddpmkit.train import train

    fid = {"every": 2, "every_n": 4, "every_steps": 2, "every_sampler": "ddim", "ref_n": 8}
    settings = tiny(tmp_path / "run", train={"max_steps": 2}, fid=fid, data={"cache_dir": str(tmp_path / "cache")})
    lines: list[str] = []
    train(settings, log=lines.append, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    fid_records = [r for r in records if "fid" in r]
    assert len(fid_records) == 1 and fid_records[0]["step"] == 2
    colour = fid_records[0]["colour"]
    assert colour["samples"]["n"] == 4
    ref = _numpy_colour(make_faces(8, 16, seed=int(settings.data.synthetic_seed)).numpy())
    np.testing.assert_allclose(colour["reference"]["mean"], ref[0], atol=1e-3)
    np.testing.assert_allclose(colour["reference"]["saturated"], ref[2], atol=1e-6)
    assert any("FID" in m and "saturated" in m and "(data " in m for m in lines)


def test_report_fid_table_shows_saturated_share():
    from types import SimpleNamespace

    from ddpmkit.report.sections import fid_section

    colour = compare(ColourStats(4, (1, 2, 3), (4, 5, 6), (0.1, 0.2, 0.3)), ColourStats(8, (1, 2, 3), (4, 5, 6), (0.01,) * 3))
    log = [{"step": 2, "fid": 300.0, "fid_n": 4, "fid_sampler": "ddim2", "colour": colour},
           {"step": 4, "fid": 250.0, "fid_n": 4, "fid_sampler": "ddim2"}]  # a record from before the colour check
    _, _, body = fid_section(SimpleNamespace(fid_log=log, config={}))
    assert "saturated (data)" in body and "20.0% (1.0%)" in body and "—" in body

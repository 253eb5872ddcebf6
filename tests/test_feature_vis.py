"""Feature visualisation methods on tiny models: each raises its latent, accentuation keeps to its
budget, batching changes nothing, the batched MACO / accentuation follow horama's own loops, the
seeds and measures, and bad options are one line (exit 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.universality.activation_max import (ActMaxSettings, color_matrix, job_generator, maco_phase_init,
                                                  maximize_latents, rms_distance)
from analysis.universality.codes import SplitCodes
from analysis.universality.feature_model import frozen
from analysis.universality.feature_vis import (change_cosine, dominant_classes, magnitude_template, method_inputs,
                                               seed_images, ssim, to_unit)
from common.errors import UserError, run_cli
from helpers.tiny_objective import tiny_objective


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors: extra threads only fight other processes on 2 cores."""


def _seeds(n: int, shape, seed: int = 1) -> torch.Tensor:
    """Smooth random images spanning exactly [0, 1] (so horama's min-max rescaling is the identity)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, *shape, generator=g), 3, 1, 1)
    lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo)


SHAPE = (1, 12, 12)
LATENTS = [0, 5, 5, 9, 30]


def _kwargs(method: str, shape=SHAPE, n=len(LATENTS)):
    if method == "maco":
        return {"magnitude": magnitude_template(_seeds(16, shape, seed=7), shape)}
    if method == "accentuation":
        return {"seeds": _seeds(n, shape)}
    return {}


@pytest.mark.parametrize("method,lr", [("fourier", 0.5), ("pixel", 0.1), ("maco", 0.2), ("accentuation", 0.5)])
def test_each_method_raises_its_latent_and_batching_changes_nothing(method, lr):
    head, sae, objective = tiny_objective()
    keys = [(0, f) for f in LATENTS]
    plain = ActMaxSettings(method=method, steps=30, lr=lr, jitter=0, batch_size=8, seed=3, distance_budget=0.5,
                           penalty=0.0)
    jittered = ActMaxSettings(**{**plain.__dict__, "jitter": 1, "steps": 12})
    kwargs = _kwargs(method)
    if method == "accentuation":
        kwargs["seeds"][2] = kwargs["seeds"][1]
    with frozen(head, sae):
        raised = maximize_latents(objective, LATENTS, SHAPE, plain, keys=keys, **kwargs)
        batched = maximize_latents(objective, LATENTS, SHAPE, jittered, keys=keys, **kwargs)
        single = maximize_latents(objective, LATENTS, SHAPE, ActMaxSettings(**{**jittered.__dict__, "batch_size": 1}),
                                  keys=keys, **kwargs)
    assert raised.images.shape == (5, 1, 12, 12) and 0 <= raised.images.min() and raised.images.max() <= 1
    assert (raised.final > raised.start + 0.02).all(), (raised.start, raised.final)
    torch.testing.assert_close(batched.images, single.images, rtol=0, atol=1e-4)
    torch.testing.assert_close(batched.images[1], batched.images[2])  # same key (0, 5) and seed: same job
    if method == "accentuation":  # starts from the seed itself
        torch.testing.assert_close(raised.seeds, kwargs["seeds"])
        assert rms_distance(raised.images, raised.seeds).max() > 0.01
    else:
        assert raised.seeds is None


def test_accentuation_starts_at_the_seed_and_stays_within_its_budget():
    head, sae, objective = tiny_objective()
    seeds = _seeds(len(LATENTS), SHAPE)
    loose = ActMaxSettings(method="accentuation", steps=40, lr=1.0, jitter=0, penalty=0.0, distance_budget=10.0)
    tight = ActMaxSettings(**{**loose.__dict__, "distance_budget": 0.03})
    with frozen(head, sae):
        free = maximize_latents(objective, LATENTS, SHAPE, loose, seeds=seeds)
        kept = maximize_latents(objective, LATENTS, SHAPE, tight, seeds=seeds)
        start = objective(seeds, torch.tensor(LATENTS))
    torch.testing.assert_close(kept.start, start, atol=2e-3, rtol=1e-2)  # the start image is the seed
    assert (rms_distance(free.images, seeds) > 0.03).all()  # unconstrained, it walks further away
    assert (rms_distance(kept.images, seeds) <= 0.03).all()
    assert (kept.final > kept.start).all() and (free.final >= kept.final - 1e-5).all()


# ----- against horama's own (one-image) loops ----------------------------------------------------------
def _no_crops(objective_function, image, box_size, noise_level, crops, model_input_size):
    """horama's optimisation step without its random crops and noise (which need a large canvas)."""
    image.retain_grad()
    return -objective_function(image.unsqueeze(0)).sum(), image


@pytest.mark.parametrize("method", ["maco", "accentuation"])
def test_batched_methods_match_horama_on_a_few_latents(method, monkeypatch):
    import horama.feature_accentuation as fa
    import horama.maco_fv as mf

    # Adam turns the round-off of near-zero gradients (spectrum entries the real inverse FFT ignores)
    # into full steps, so the two loops drift apart slowly (~5e-4 after 6 accentuation steps, 8e-3 after
    # 15): compare early.
    shape, latents, lr = (3, 12, 12), [2, 7, 19], 0.3
    steps = 15 if method == "maco" else 6
    head, sae, objective = tiny_objective()
    settings = ActMaxSettings(method=method, steps=steps, lr=lr, jitter=0, batch_size=8, seed=5, penalty=0.7,
                              distance_budget=10.0)
    kwargs = _kwargs(method, shape, len(latents))
    monkeypatch.setattr(mf, "optimization_step", _no_crops)
    monkeypatch.setattr(fa, "optimization_step", _no_crops)
    with frozen(head, sae):
        mine = maximize_latents(objective, latents, shape, settings, **kwargs).images
        theirs = []
        for j, f in enumerate(latents):
            target = torch.tensor([f])
            score = lambda x, t=target: objective(x, t)  # noqa: E731
            if method == "maco":
                phase = maco_phase_init(shape, job_generator(5, (f,)))
                monkeypatch.setattr(mf, "init_maco_buffer", lambda *a, **k: (kwargs["magnitude"].clone(), phase.clone()))
                image, _ = mf.maco(score, total_steps=steps, learning_rate=lr, image_size=12, model_input_size=12,
                                   values_range=(0.0, 1.0), device="cpu")
            else:
                image, _ = fa.accentuation(score, kwargs["seeds"][j], total_steps=steps, learning_rate=lr,
                                           image_size=12, model_input_size=12, values_range=(0.0, 1.0),
                                           penalty=0.7, device="cpu")
            theirs.append(image.detach())
    theirs = torch.stack(theirs)
    assert (theirs - kwargs.get("seeds", torch.zeros_like(theirs))).abs().max() > 0.02  # it did move
    torch.testing.assert_close(mine, theirs, rtol=0, atol=2e-4 if method == "maco" else 1e-3)


def test_magnitude_template_decorrelates_colours_like_horama():
    shape = (3, 8, 8)
    x = _seeds(4, shape)
    template = magnitude_template(x, shape)
    assert template.shape == (3, 8, 5)
    flat = torch.einsum("bchw,cd->bdhw", x, torch.linalg.pinv(color_matrix()))
    torch.testing.assert_close(template, torch.fft.rfft2(flat).abs().mean(0))
    grey = magnitude_template((x[:, :1] * 255).to(torch.uint8), (1, 16, 16))
    assert grey.shape == (1, 16, 9) and grey[0, 0, 0] > grey[0, 8, 8]  # natural images: power at low frequency


# ----- seeds and measures --------------------------------------------------------------------------------
def _codes() -> tuple[SplitCodes, torch.Tensor, torch.Tensor]:
    """6 images, 3 latents, 2 models: latent 0 fires most on image 4 (summed), latent 2 only on class-1 images."""
    a = torch.zeros(6, 3)
    b = torch.zeros(6, 3)
    a[4, 0], b[1, 0], b[4, 0] = 1.0, 1.2, 0.5
    a[[1, 3], 2], b[5, 2] = 0.4, 0.9
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    images = (torch.arange(6).view(6, 1, 1, 1).expand(6, 1, 4, 4) * 40).to(torch.uint8)
    return SplitCodes(["a", "b"], {"a": a, "b": b}, {"a": a, "b": b}), images, labels


def test_seed_images_top_class_and_file(tmp_path):
    codes, images, labels = _codes()
    top = seed_images("top", codes, images, labels, [0, 2], (1, 8, 8), 2)
    assert top.index == [4, 5] and top.images.shape == (2, 1, 8, 8)
    torch.testing.assert_close(top.images[0], torch.full((1, 8, 8), 160 / 255))
    assert dominant_classes(codes, labels, [2], 2) == [1]
    cls = seed_images("class", codes, images, labels, [0, 2], (1, 8, 8), 2)
    assert cls.index == [2, 3]  # the class-0 / class-1 image closest to its class's mean image
    from torchvision.io import write_png

    path = tmp_path / "seed.png"
    write_png(torch.full((3, 5, 5), 200, dtype=torch.uint8), str(path))
    one = seed_images(str(path), codes, images, labels, [0, 2], (1, 8, 8), 2)
    assert one.index == [-1, -1] and torch.allclose(one.images, torch.full((2, 1, 8, 8), 200 / 255))
    settings = ActMaxSettings(method="accentuation", seed_image=str(path))
    assert method_inputs(settings, codes, images, labels, [0, 2], (1, 8, 8), 2)["seeds"].shape == (2, 1, 8, 8)
    assert to_unit(images, (3, 4, 4)).shape == (6, 3, 4, 4)


def test_agreement_measures():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 1, 16, 16, generator=g)
    b = torch.rand(3, 1, 16, 16, generator=g)
    same = ssim(a, a)
    torch.testing.assert_close(same, torch.ones(3))
    assert (ssim(a, b) < 0.5).all()
    seeds = torch.full_like(a, 0.5)
    torch.testing.assert_close(change_cosine(a, a, seeds), torch.ones(3))
    torch.testing.assert_close(change_cosine(seeds + 0.1, seeds - 0.1, seeds), -torch.ones(3))


# ----- bad options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,expect", [({"method": "deepdream"}, "method"), ({"distance_budget": 0.0}, "distance_budget"),
                                        ({"distance_budget": -1.0}, "distance_budget"), ({"lr": 0.0}, "lr"),
                                        ({"steps": 0}, "steps"), ({"seed_image": "no/such.png"}, "no/such.png")])
def test_bad_options_are_user_errors(bad, expect):
    with pytest.raises(UserError, match=expect.replace(".", r"\.")):
        ActMaxSettings(**bad)


@pytest.mark.parametrize("option,value,expect", [("method", "deepdream", "deepdream"),
                                                 ("distance_budget", "0", "distance_budget"),
                                                 ("seed_image", "missing_seed.png", "missing_seed.png")])
def test_bad_options_through_analyze_are_one_line_and_exit_2(option, value, expect, tmp_path, capsys, monkeypatch):
    import logging

    import analyze

    # lightning's "Seed set" log line goes to the stderr of the test that first imported it
    monkeypatch.setattr(logging.getLogger("lightning.fabric.utilities.seed"), "disabled", True)
    monkeypatch.chdir(tmp_path)
    args = ["--analysis", "analysis.universality.study.UniversalityStudy",
            "--analysis.init_args.inputs.usae_checkpoint", "u.ckpt", "--analysis.init_args.inputs.independent_checkpoint", "i.ckpt",
            "--analysis.init_args.inputs.train_config", "c.yaml", "--analysis.init_args.output_dir", str(tmp_path / "out"),
            f"--analysis.init_args.act_max.{option}", value]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: analyze.main(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert not (tmp_path / "out").exists()


def test_settings_defaults_resolve_per_method():
    assert ActMaxSettings(method="fourier").step_size == 0.1
    assert ActMaxSettings(method="accentuation", lr=0.3).step_size == 0.3
    assert np.isfinite(ActMaxSettings(method="maco").step_size)


def test_benchmark_results_saved_with_save_load_back_through_the_safe_loader(tmp_path):
    """bench_feature_vis --save / --load: numpy arrays and TopImages survive the weights-only loader."""
    from analysis.universality.top_images import TopImages
    from benchmarks.bench_feature_vis import plain, unplain
    from common.io import atomic_torch_save
    from common.safe_load import load_weights

    tops = TopImages(np.arange(6).reshape(2, 3), np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32))
    result = {"numbers": {"split": "val", "latents": [3, 5], "fires": np.array([[1, 0], [0, 2]])},
              "images": {"tops": {"a": tops}, "natural": torch.zeros(2, 1, 4, 4), "seeds": None}}
    atomic_torch_save({"results": {"val": plain(result)}}, tmp_path / "val.pt")
    back = unplain(load_weights(tmp_path / "val.pt", "--load")["results"]["val"])
    assert isinstance(back["images"]["tops"]["a"], TopImages)
    np.testing.assert_array_equal(back["images"]["tops"]["a"].index, tops.index)
    np.testing.assert_array_equal(back["numbers"]["fires"], result["numbers"]["fires"])
    assert back["numbers"]["latents"] == [3, 5] and back["images"]["seeds"] is None

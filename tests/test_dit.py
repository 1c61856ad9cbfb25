"""DiT network invariants (Peebles & Xie 2023: adaLN-Zero init, small conditioning embeddings, the null
class, label dropout) and the DiT pipeline's contract."""

import numpy as np
import pytest
import torch

from studio.errors import ConfigError, StudioError
from studio.hub import load_pipeline, save_pipeline
from studio.models.dit import DiTConfig, build_dit, drop_labels
from studio.pipelines.record import read_record, save_png


def test_adaln_zero_init_makes_output_zero_and_blocks_identity():
    model = build_dit(DiTConfig(sample_size=16, patch_size=4, depth=2, num_heads=2, head_dim=8)).eval()
    x = torch.randn(3, 1, 16, 16)
    t, y = torch.tensor([1, 500, 999]), torch.tensor([0, 4, 10])  # 10 = the null class
    assert torch.equal(model(x, timestep=t, class_labels=y).sample, torch.zeros_like(x))
    block = model.transformer_blocks[0]
    hidden = torch.randn(3, 16, 16)
    out = block(hidden, timestep=t, class_labels=y)
    assert torch.equal(out, hidden)


def test_conditioning_embeddings_start_small_as_in_the_paper():
    """Class tables start at N(0, 0.02), not N(0, 1): otherwise they drown the timestep signal."""
    model = build_dit(DiTConfig(sample_size=16, patch_size=4, depth=2, num_heads=2, head_dim=32))
    for block in model.transformer_blocks:
        table = block.norm1.emb.class_embedder.embedding_table.weight
        assert 0.01 < table.std().item() < 0.03
        assert 0.01 < block.norm1.emb.timestep_embedder.linear_1.weight.std().item() < 0.03
    assert torch.count_nonzero(model.pos_embed.proj.bias) == 0


def test_null_class_is_num_classes_and_beyond_is_refused():
    model = build_dit(DiTConfig(sample_size=16, patch_size=4, depth=1, num_heads=2, head_dim=8)).eval()
    x, t = torch.randn(1, 1, 16, 16), torch.tensor([10])
    model(x, timestep=t, class_labels=torch.tensor([10]))
    with pytest.raises(IndexError):
        model(x, timestep=t, class_labels=torch.tensor([11]))


def test_label_dropout_happens_once_outside_the_model():
    model = build_dit(DiTConfig(sample_size=16, patch_size=4, depth=2, num_heads=2, head_dim=8))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    x, t, y = torch.randn(4, 1, 16, 16), torch.tensor([3] * 4), torch.tensor([1, 2, 3, 4])
    dropped = drop_labels(y, 10, probability=1.0)
    assert torch.equal(dropped, torch.full_like(y, 10))
    train_out = model.train()(x, timestep=t, class_labels=dropped).sample
    eval_out = model.eval()(x, timestep=t, class_labels=torch.full_like(y, 10)).sample
    assert torch.equal(train_out, eval_out)  # no extra per-block dropout in train mode


def test_patch_size_must_divide_image_size():
    with pytest.raises(ConfigError, match="not divisible"):
        build_dit(DiTConfig(sample_size=30, patch_size=4))


def test_output_types_and_record(dit_pipe):
    out = dit_pipe(num_images=3, class_labels=[1, 2, 3], num_inference_steps=3, seed=7, output_type="np")
    assert out.images.shape == (3, 16, 16, 1) and 0 <= out.images.min() and out.images.max() <= 1
    assert out.record.seeds == [7, 8, 9] and out.record.class_labels == [1, 2, 3]
    assert out.record.steps == 3 and out.record.sampler == "ddpm" and out.record.family == "dit"
    pil = dit_pipe(num_images=2, num_inference_steps=2, output_type="pil").images
    assert len(pil) == 2 and pil[0].size == (16, 16)


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "dpm++", "euler", "euler_a", "heun"])
def test_image_i_is_identical_for_batch_sizes_1_4_16(dit_pipe, scheduler):
    def run(batch_size):
        images = []
        for start in range(0, 16, batch_size):
            idx = list(range(start, start + batch_size))
            images.append(
                dit_pipe(
                    class_labels=[i % 10 for i in idx],
                    seed=[100 + i for i in idx],
                    num_inference_steps=3,
                    scheduler=scheduler,
                    output_type="pt",
                ).images
            )
        return torch.cat(images)

    reference = run(16)
    assert torch.equal(run(1), reference)
    assert torch.equal(run(4), reference)


def test_same_seed_same_image_different_seed_different_image(dit_pipe):
    a = dit_pipe(num_images=2, seed=0, num_inference_steps=3, output_type="pt").images
    b = dit_pipe(num_images=2, seed=0, num_inference_steps=3, output_type="pt").images
    c = dit_pipe(num_images=2, seed=50, num_inference_steps=3, output_type="pt").images
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_guidance_zero_is_the_unconditional_model(dit_pipe):
    guided = dit_pipe(
        num_images=3, class_labels=[1, 2, 3], guidance_scale=0.0, num_inference_steps=3, output_type="pt"
    ).images

    def force_null(module, args, kwargs):
        kwargs["class_labels"] = torch.full_like(kwargs["class_labels"], 10)
        return args, kwargs

    handle = dit_pipe.transformer.register_forward_pre_hook(force_null, with_kwargs=True)
    try:
        unconditional = dit_pipe(
            num_images=3, class_labels=[1, 2, 3], guidance_scale=1.0, num_inference_steps=3, output_type="pt"
        ).images
    finally:
        handle.remove()
    assert torch.equal(guided, unconditional)


def test_guidance_changes_images_and_labels_matter(dit_pipe):
    base = dit_pipe(
        num_images=2, class_labels=3, guidance_scale=1.0, num_inference_steps=3, output_type="pt"
    ).images
    cfg = dit_pipe(
        num_images=2, class_labels=3, guidance_scale=4.0, num_inference_steps=3, output_type="pt"
    ).images
    other = dit_pipe(
        num_images=2, class_labels=5, guidance_scale=1.0, num_inference_steps=3, output_type="pt"
    ).images
    assert not torch.equal(base, cfg) and not torch.equal(base, other)


def test_save_load_round_trip_is_bit_identical(dit_pipe, tmp_path):
    save_pipeline(dit_pipe, tmp_path / "ckpt", {"preset": "test"})
    loaded = load_pipeline(str(tmp_path / "ckpt"))
    loaded.set_progress_bar_config(disable=True)
    kwargs = {
        "num_images": 4,
        "class_labels": [0, 1, 2, 3],
        "num_inference_steps": 3,
        "scheduler": "ddim",
        "output_type": "pt",
    }
    assert type(loaded) is type(dit_pipe)
    assert torch.equal(loaded(**kwargs).images, dit_pipe(**kwargs).images)


def test_bad_call_arguments_raise_readable_errors(dit_pipe):
    with pytest.raises(StudioError, match="out of range"):
        dit_pipe(class_labels=[10], num_inference_steps=2)
    with pytest.raises(StudioError, match="integers"):
        dit_pipe(class_labels=["3"], num_inference_steps=2)
    with pytest.raises(ConfigError, match="unknown scheduler"):
        dit_pipe(num_images=1, num_inference_steps=2, scheduler="nope")


def test_interrupt_from_step_callback_stops_early(dit_pipe):
    calls = []

    def stop_after_two(pipe, i, t, tensors):
        calls.append(i)
        if i == 1:
            pipe._interrupt = True
        return tensors

    out = dit_pipe(
        num_images=1, num_inference_steps=10, callback_on_step_end=stop_after_two, output_type="np"
    )
    assert calls == [0, 1] and out.record.extra["interrupted"] is True


def test_png_carries_the_generation_record(dit_pipe, tmp_path):
    out = dit_pipe(num_images=2, class_labels=[4, 5], seed=3, num_inference_steps=2, output_type="np")
    save_png(out.images[1], str(tmp_path / "x.png"), out.record.for_image(1))
    record = read_record(str(tmp_path / "x.png"))
    assert record.seeds == [4] and record.class_labels == [5] and record.steps == 2
    from PIL import Image

    with Image.open(tmp_path / "x.png") as image:
        assert "Seed: 4" in image.text["parameters"]
        assert np.array_equal(
            np.asarray(image), (np.clip(out.images[1], 0, 1) * 255 + 0.5).astype(np.uint8)[..., 0]
        )

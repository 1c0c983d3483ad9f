"""gqa_lib.pictures.smollm_groups: notebook 05's pictures of KV groups (clipping, group lines, colours, profiles)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from gqa_lib.pictures import smollm_groups as gp
from gqa_lib.pictures.style import PALETTE


def test_clip_limit_is_the_percentile_of_absolute_values():
    x = torch.cat([torch.linspace(-1, 1, 99), torch.tensor([50.0])])  # one outlier
    assert gp.clip_limit(x, 100) == 50.0
    assert gp.clip_limit(x, 98) == pytest.approx(float(np.percentile(np.abs(x.numpy()), 98)))
    assert gp.clip_limit(x, 98) <= 1.0  # the outlier no longer sets the scale


@pytest.mark.parametrize("bad", [0, -1, 101, True, "99"])
def test_clip_limit_rejects_bad_percentiles(bad):
    with pytest.raises(ValueError, match=rf"percentile={bad!r} must be a number in \(0, 100\]"):
        gp.clip_limit(torch.ones(3), bad)


def test_kv_blocks_are_clipped_with_an_extended_colour_bar_and_group_lines():
    x = torch.randn(6, 4, 8, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0] = 100.0
    fig, ax = plt.subplots()
    im = gp.plot_kv_blocks(x, group_size=3, ax=ax, name="K", percentile=95)
    lim = gp.clip_limit(x, 95)
    assert im.get_clim() == pytest.approx((-lim, lim)) and lim < 10
    assert im.get_array().shape == (24, 8)  # 6 heads x 4 tokens, 8 dims
    widths = sorted(line.get_linewidth() for line in ax.get_lines())
    assert widths == [0.6] * 4 + [2.5]  # 5 boundaries between 6 heads, one of them between the 2 groups
    cbar = fig.axes[-1]
    assert "95th percentile" in cbar.get_ylabel() and im.colorbar.extend == "both"
    plt.close(fig)


def test_kv_blocks_reject_a_group_size_that_does_not_divide():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="group_size=4 must be a positive integer that divides n_heads=6"):
        gp.plot_kv_blocks(torch.zeros(6, 2, 3), 4, ax)
    plt.close(fig)


def test_kv_blocks_name_the_token_order_and_reject_a_wrong_token_count():
    fig, ax = plt.subplots()
    gp.plot_kv_blocks(torch.zeros(6, 2, 3), 3, ax, tokens=["The", " end"])
    assert ax.get_title().endswith("(2 tokens a block,\n'The' to 'end' top to bottom)")
    with pytest.raises(ValueError, match="tokens has 3 entries; x_seen has seq=2 tokens a block"):
        gp.plot_kv_blocks(torch.zeros(6, 2, 3), 3, ax, tokens=["a", "b", "c"])
    plt.close(fig)


def test_column_norm_profiles_label_each_axis_with_its_kv_head_and_quantity():
    fig, axes = plt.subplots(2, 1)
    gp.plot_column_norm_profiles(np.ones((2, 5)), axes)
    assert [ax.get_ylabel() for ax in axes] == ["KV head 0\ncolumn norm", "KV head 1\ncolumn norm"]
    plt.close(fig)


def test_pair_and_kv_head_colours_are_not_attention_kind_colours():
    used = set(PALETTE.values())
    assert not used & set(gp.PAIR_COLORS.values()) and not used & set(gp.KV_HEAD_COLORS)


def test_within_across_plot_draws_the_mean_and_the_range():
    within = torch.tensor([[0.1, 0.2, 0.3], [0.3, 0.4, 0.5]])  # 2 texts, 3 layers
    across = within + 0.1
    fig, ax = plt.subplots()
    gp.plot_within_across(within, across, ax)
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) == 3]
    means = sorted(tuple(np.round(line.get_ydata(), 6)) for line in lines)
    assert means == [(0.2, 0.3, 0.4), (0.3, 0.4, 0.5)]
    colours = {matplotlib.colors.to_hex(line.get_color()) for line in lines}
    assert colours == {c.lower() for c in gp.PAIR_COLORS.values()}
    band = ax.collections[0].get_paths()[0].vertices[:, 1]  # the within band spans min..max of the texts
    assert band.min() == pytest.approx(0.1) and band.max() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="must be the same"):
        gp.plot_within_across(within, across[:, :2], ax)
    plt.close(fig)


def test_column_norm_profiles_are_norms_over_the_head_dimension():
    blocks = torch.zeros(2, 3, 5)
    blocks[1, :, 4] = torch.tensor([3.0, 4.0, 0.0])
    p = gp.column_norm_profiles(blocks)
    assert p.shape == (2, 5) and p[1, 4] == 5.0 and p.sum() == 5.0
    fig, axes = plt.subplots(2, 1)
    gp.plot_column_norm_profiles(p, axes)
    assert axes[0].get_ylim() == axes[1].get_ylim()  # heights compare across KV heads
    with pytest.raises(ValueError, match="one Axes per KV head"):
        gp.plot_column_norm_profiles(p, axes[:1])
    plt.close(fig)


def test_profiles_weighted_by_the_inputs_are_the_rms_of_each_inputs_contribution():
    g = torch.Generator().manual_seed(0)
    blocks = torch.randn(2, 4, 6, generator=g)  # 2 KV heads, head_dim 4, d_model 6
    x = torch.randn(9, 6, generator=g) * torch.tensor([10.0, 1, 1, 1, 1, 0.1])  # dimension 0 is large
    p = gp.column_norm_profiles(blocks, inputs=x)
    for j in range(2):
        for c in range(6):
            contribution = x[:, c:c + 1] * blocks[j][:, c]  # (tokens, head_dim): what input c alone adds
            assert p[j, c] == pytest.approx(float(contribution.pow(2).sum(1).mean().sqrt()), rel=1e-5)
    rms = x.pow(2).mean(0).sqrt().numpy()  # each input dimension's root mean square over the tokens
    assert p / gp.column_norm_profiles(blocks) == pytest.approx(np.broadcast_to(rms, (2, 6)), rel=1e-5)
    with pytest.raises(ValueError, match=r"inputs.shape=\(9, 5\) must be \(tokens, d_model=6\)"):
        gp.column_norm_profiles(blocks, inputs=x[:, :5])


def test_uncorrelated_inputs_make_the_weighted_profile_the_outputs_energy():
    # Inputs with orthogonal columns: the squared weighted profile adds up to the block's mean output energy.
    blocks = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(1))
    x = torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.5]))  # 4 tokens, each lights one input dimension
    p = gp.column_norm_profiles(blocks, inputs=x)
    energy = (x @ blocks[0].T).pow(2).sum(1).mean()
    assert float((p ** 2).sum()) == pytest.approx(float(energy), rel=1e-5)


def test_top_input_share_names_the_largest_entries_and_their_share():
    p = np.array([[3.0, 0.0, 4.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    share, top = gp.top_input_share(p, k=1)
    assert share == pytest.approx([16 / 25, 0.25]) and top[0].tolist() == [2]
    share, top = gp.top_input_share(p, k=2)
    assert share[0] == 1.0 and top[0].tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"k=5 must be an integer in 1..4"):
        gp.top_input_share(p, k=5)
    with pytest.raises(ValueError, match="profile 0 is all zeros"):
        gp.top_input_share(np.zeros((1, 3)), k=1)


def test_a_weighted_profile_is_labelled_with_what_it_measures():
    fig, axes = plt.subplots(1, 1)
    gp.plot_column_norm_profiles(np.ones((1, 5)), axes, name="k_proj", quantity="column norm x input RMS")
    assert np.atleast_1d(axes)[0].get_ylabel() == "KV head 0\ncolumn norm x input RMS"
    assert np.atleast_1d(axes)[0].get_title() == "k_proj: column norm x input RMS\nof each input dimension, per KV head"
    plt.close(fig)

"""View sharing against hand-worked cases and a brute-force nearest-frame reference."""

import pytest
import torch

from kmtr_monai.view_sharing import view_share


def _brute_force(k, m):
    """For every (t, line): the mean of the sampled frames at the smallest cyclic distance (einsum over all frames)."""
    n_t = m.shape[2]
    t = torch.arange(n_t)
    d = (t[:, None] - t[None, :]).abs()
    d = torch.minimum(d, n_t - d).double()  # (T, U)
    dist = torch.where(m[:, :, None], d[None, None, :, :, None], torch.inf)  # (B, S, T, U, H)
    w = (dist == dist.min(3, keepdim=True).values) & dist.isfinite()
    w = w.double() / w.sum(3, keepdim=True).clamp_min(1)
    return torch.einsum("bstuh,bcsuhw->bcsthw", w, torch.where(m[:, None, ..., None], k, 0.0))


def _one_line(n_t, frames):
    """k (1, 1, 1, T, 1, 1) with value t+1 in frame t, mask sampling the given frames."""
    k = (torch.arange(n_t, dtype=torch.float64) + 1).view(1, 1, 1, n_t, 1, 1)
    m = torch.zeros(1, 1, n_t, 1, dtype=torch.bool)
    m[0, 0, list(frames), 0] = True
    return k, m


def test_hand_worked_cases():
    k, m = _one_line(8, [0, 6])  # values 1 (frame 0) and 7 (frame 6)
    out = view_share(k, m).flatten().tolist()
    # t=0 sampled (1); t=1..2 -> frame 0; t=3 tie (0 and 6) -> mean 4; t=4,5 -> frame 6 (7); t=6 sampled;
    # t=7 is one frame from 6 and (cyclically) one from 0 -> mean 4
    assert out == [1, 1, 1, 4, 7, 7, 7, 4]
    k, m = _one_line(5, [2])  # a single sampled frame is copied everywhere
    assert view_share(k, m).flatten().tolist() == [3.0] * 5
    k, m = _one_line(4, [])  # never sampled: stays zero
    assert view_share(k, m).abs().sum() == 0


@pytest.mark.parametrize("n_t", [3, 4, 8, 9])
def test_matches_brute_force_and_keeps_sampled_lines(n_t):
    g = torch.Generator().manual_seed(n_t)
    k = torch.randn(3, 2, 2, n_t, 12, 5, generator=g, dtype=torch.float64)
    m = torch.rand(3, 2, n_t, 12, generator=g) < 0.3
    out = view_share(k, m)
    torch.testing.assert_close(out, _brute_force(k, m), rtol=0, atol=1e-12)
    keep = m[:, None, ..., None].expand_as(k)
    assert torch.equal(out[keep], k[keep])


def test_no_leakage_from_unsampled_values():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(2, 2, 3, 6, 16, 4, generator=g)
    m = torch.rand(2, 3, 6, 16, generator=g) < 0.25
    junk = torch.where(m[:, None, ..., None], k, torch.full_like(k, float("inf")))
    assert torch.equal(view_share(k, m), view_share(junk, m))


def test_shape_errors_name_the_expected_layout():
    with pytest.raises(ValueError, match=r"\(B, C, S, T, H, W\)"):
        view_share(torch.zeros(2, 2, 3, 4, 5), torch.zeros(2, 3, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask \(B, S, T, H\)"):
        view_share(torch.zeros(2, 2, 3, 4, 5, 6), torch.zeros(2, 3, 4, 6, dtype=torch.bool))

"""Properties of the shared vector quantizers (hf_vtok.utils.quantizers)."""

import pytest
import torch
import torch.nn.functional as F

from hf_vtok.utils.quantizers import Codebook, ResidualVectorQuantizer, VectorQuantizer


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def blobs(num_per_blob=64, centres=None, spread=0.05):
    """Points around a few well-separated centres."""
    centres = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0], [0.0, -4.0]]) if centres is None else centres
    points = centres.repeat_interleave(num_per_blob, 0) + spread * torch.randn(len(centres) * num_per_blob, centres.shape[1])
    return points, centres


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_search_matches_brute_force_and_does_not_depend_on_chunking(distance):
    codebook = Codebook(300, 8, distance=distance)
    vectors = torch.randn(1000, 8)
    codes = codebook.codes
    if distance == "euclidean":
        expected = torch.cdist(vectors, codes).argmin(-1)
    else:
        expected = (F.normalize(vectors, dim=-1) @ codes.t()).argmax(-1)
    assert torch.equal(codebook.search(vectors), expected)
    # a budget of 300 scores means one token per chunk: same answer
    codebook.search_budget = 300
    assert torch.equal(codebook.search(vectors), expected)


def test_eval_round_trip_encode_decode_matches_forward():
    quantizer = VectorQuantizer(32, 64, code_dim=8).eval()
    x = torch.randn(4, 10, 32)
    out = quantizer(x)
    ids = quantizer.encode(x)
    assert torch.equal(ids, out.ids)
    assert torch.allclose(quantizer.decode(ids), out.quantized, atol=1e-6)
    # without projections, codes are fixed points: quantizing a decoded code returns it
    plain = VectorQuantizer(8, 64).eval()
    ids = plain.encode(torch.randn(4, 10, 8))
    assert torch.equal(plain.encode(plain.decode(ids)), ids)


def test_straight_through_gradient_reaches_the_input():
    quantizer = VectorQuantizer(16, 32)  # no projection: quantized = x + (e - x).detach()
    x = torch.randn(5, 16, requires_grad=True)
    out = quantizer(x)
    (out.quantized * torch.arange(16.0)).sum().backward()
    assert torch.allclose(x.grad, torch.arange(16.0).expand(5, 16))


def test_commitment_loss_is_distance_to_the_chosen_code():
    quantizer = VectorQuantizer(16, 32, commitment_weight=0.25).eval()
    x = torch.randn(50, 16)
    out = quantizer(x)
    codes = quantizer.codebook.codes[out.ids]
    assert torch.allclose(out.commitment_loss, F.mse_loss(x, codes))
    assert torch.allclose(out.loss, 0.25 * out.commitment_loss)


def test_gradient_codebook_gets_codebook_loss_and_gradient():
    quantizer = VectorQuantizer(8, 16, use_ema=False)
    out = quantizer(torch.randn(40, 8))
    out.loss.backward()
    assert quantizer.codebook.weight.grad is not None and quantizer.codebook.weight.grad.abs().sum() > 0


def test_ema_moves_codes_towards_assigned_means():
    points, centres = blobs()
    quantizer = VectorQuantizer(2, 4, ema_decay=0.5)
    with torch.no_grad():
        quantizer.codebook.weight.copy_(centres + 1.0)  # every code starts off its blob
        quantizer.codebook.embed_sum.copy_(quantizer.codebook.weight)
    before = (quantizer.codebook.weight - centres).norm(dim=-1)
    quantizer.train()
    for _ in range(5):
        quantizer(points)
    after = (quantizer.codebook.weight - centres).norm(dim=-1)
    assert (after < 0.2 * before).all(), (before, after)


def test_kmeans_initialisation_finds_the_clusters():
    points, centres = blobs()
    quantizer = VectorQuantizer(2, 4, kmeans_init=True, kmeans_iters=20)
    assert not bool(quantizer.codebook.initialized)
    quantizer.train()(points)
    assert bool(quantizer.codebook.initialized)
    distances = torch.cdist(centres, quantizer.codebook.weight)
    assert (distances.min(dim=1).values < 0.1).all()


def test_dead_codes_are_revived_from_batch_vectors():
    quantizer = VectorQuantizer(4, 8, dead_code_threshold=0.5, ema_decay=0.99)
    with torch.no_grad():
        quantizer.codebook.weight.copy_(torch.full((8, 4), 100.0) + torch.arange(8.0)[:, None])
        quantizer.codebook.cluster_size.fill_(0.01)  # every code looks unused
    batch = torch.randn(64, 4)
    used = quantizer.train()(batch).ids.unique()
    unused = torch.tensor([code for code in range(8) if code not in used.tolist()])
    assert len(unused) >= 7
    # every code this batch did not use was dead and now equals one of the batch vectors
    revived = quantizer.codebook.weight[unused]
    # exact differences (cdist's matrix-product shortcut is off by ~1e-3 near zero)
    distance_to_batch = (revived[:, None, :] - batch[None]).norm(dim=-1).min(dim=1).values
    assert (distance_to_batch < 1e-5).all()
    assert (quantizer.codebook.cluster_size >= 0.5).all()


def test_usage_and_perplexity_statistics():
    quantizer = VectorQuantizer(4, 4).eval()
    with torch.no_grad():
        quantizer.codebook.weight.copy_(torch.eye(4) * 10)
    uniform = quantizer(torch.eye(4).repeat(8, 1) * 10)
    assert torch.isclose(uniform.perplexity, torch.tensor(4.0))
    assert uniform.usage == 1.0
    single = quantizer(torch.eye(4)[:1].repeat(8, 1) * 10)
    assert torch.isclose(single.perplexity, torch.tensor(1.0))
    assert single.usage == 0.25


def test_cosine_quantizer_is_scale_invariant_and_normalised():
    quantizer = VectorQuantizer(16, 64, code_dim=16, distance="cosine").eval()
    x = torch.randn(30, 16)
    assert torch.equal(quantizer.encode(x), quantizer.encode(7.0 * x))
    assert torch.allclose(quantizer.codebook.codes.norm(dim=-1), torch.ones(64))


def test_codebook_stays_float32_under_half_precision():
    quantizer = VectorQuantizer(16, 64, code_dim=8).to(torch.bfloat16).eval()
    x = torch.randn(10, 16, dtype=torch.bfloat16)
    out = quantizer(x)
    assert quantizer.codebook.weight.dtype == torch.float32
    assert out.quantized.dtype == torch.bfloat16


def test_residual_error_shrinks_with_depth():
    data = torch.randn(512, 24)
    for shared in (False, True):
        rvq = ResidualVectorQuantizer(24, 64, num_depths=4, code_dim=8, shared_codebook=shared, kmeans_init=True, ema_decay=0.8)
        rvq.train()
        for _ in range(30):
            rvq(data)
        norms = rvq.eval()(data).residual_norms
        assert (norms[1:] < norms[:-1]).all(), (shared, norms)


def test_shared_codebook_is_one_tensor_and_encode_decode_agree():
    rvq = ResidualVectorQuantizer(32, 128, num_depths=4, code_dim=8, shared_codebook=True).eval()
    assert len(rvq.codebooks) == 1
    assert sum("codebooks" in name and name.endswith("weight") for name, _ in rvq.named_parameters()) == 1
    x = torch.randn(3, 5, 32)
    out = rvq(x)
    assert out.ids.shape == (3, 5, 4)
    assert torch.equal(rvq.encode(x), out.ids)
    assert torch.allclose(rvq.decode(out.ids), out.quantized, atol=1e-5)
    separate = ResidualVectorQuantizer(32, 128, num_depths=4, code_dim=8, shared_codebook=False)
    assert len(separate.codebooks) == 4


def test_residual_quantizer_counts_each_depths_codes_in_training_only():
    """``codebook_usage[d, c]``: how often depth d picked code c in training forwards (the shared codebook's EMA
    statistics mix the depths); evaluation and ``encode`` leave it alone."""
    rvq = ResidualVectorQuantizer(16, 32, num_depths=3, code_dim=4, shared_codebook=True)
    assert rvq.codebook_usage.shape == (3, 32) and int(rvq.codebook_usage.abs().sum()) == 0
    expected = torch.zeros(3, 32, dtype=torch.long)
    for _ in range(2):
        ids = rvq.train()(torch.randn(4, 5, 16)).ids.reshape(-1, 3)
        expected += torch.stack([torch.bincount(ids[:, depth], minlength=32) for depth in range(3)])
    assert torch.equal(rvq.codebook_usage, expected) and (expected.sum(dim=1) == 40).all()
    rvq.eval()(torch.randn(4, 16))
    rvq.encode(torch.randn(4, 16))
    assert torch.equal(rvq.codebook_usage, expected)
    rvq.half()  # counts, not statistics of the codes: never cast
    assert rvq.codebook_usage.dtype == torch.long


def test_gradients_flow_through_residual_quantizer_projections():
    rvq = ResidualVectorQuantizer(16, 32, num_depths=2, code_dim=4)
    x = torch.randn(8, 16, requires_grad=True)
    out = rvq(x)
    (out.quantized.pow(2).sum() + out.loss).backward()
    assert x.grad.abs().sum() > 0
    assert rvq.project_in.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: VectorQuantizer(0, 8), "dim"),
        (lambda: VectorQuantizer(8, 8, distance="manhattan"), "distance"),
        (lambda: VectorQuantizer(8, 8, ema_decay=1.5), "ema_decay"),
        (lambda: VectorQuantizer(8, 8)(torch.randn(3, 7)), "last dimension 8"),
        (lambda: VectorQuantizer(8, 8)(torch.full((3, 8), float("nan"))), "NaN"),
        (lambda: VectorQuantizer(8, 8)(torch.ones(3, 8, dtype=torch.long)), "floating-point"),
        (lambda: VectorQuantizer(8, 8).decode(torch.tensor([0, 8])), r"\[0, 8\)"),
        (lambda: VectorQuantizer(8, 8).decode(torch.tensor([-1])), "ids"),
        (lambda: ResidualVectorQuantizer(8, 8, num_depths=2).decode(torch.zeros(3, 3, dtype=torch.long)), "depths"),
        (lambda: ResidualVectorQuantizer(8, 8, num_depths=0), "num_depths"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()

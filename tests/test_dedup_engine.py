"""The dedup engine's pieces: blockwise pairwise maxima equal the full matrix's, on CPU and (gpu)
on CUDA; k-means sums computed on the worker's device."""
import numpy as np
import pandas as pd
import pytest
import torch

from nemo_aesthetic.dedup import pairwise_max_similarity, partition_embeddings
from nemo_aesthetic.dedup.fit_rows import block_sums, fit_block


def brute_force(x):
    sim = (x @ x.T).triu(diagonal=1)
    return sim.max(dim=0)


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
def test_blockwise_maxima_equal_the_full_matrix(batch_size):
    x = torch.nn.functional.normalize(torch.randn(200, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    values, index = pairwise_max_similarity(x, batch_size)
    expected_values, expected_index = brute_force(x)
    torch.testing.assert_close(values, expected_values)
    assert torch.equal(index, expected_index)


@pytest.mark.gpu
def test_pairwise_and_kmeans_sums_run_on_cuda():
    x = torch.nn.functional.normalize(torch.randn(500, 32), dim=1)
    cpu_values, cpu_index = pairwise_max_similarity(x, 64)
    values, index = pairwise_max_similarity(x.cuda(), 64)
    assert values.is_cuda
    torch.testing.assert_close(values.cpu(), cpu_values, atol=1e-5, rtol=0)
    frame = pd.DataFrame({"e": list(x.numpy())})
    rows = partition_embeddings(frame, "e", device="cuda")
    assert rows.vectors.is_cuda
    centroids = x[:4].numpy()
    on_gpu = block_sums(fit_block(frame, "e", None, 0), centroids)  # the worker's device: CUDA here
    rows_cpu = partition_embeddings(frame, "e", device="cpu")
    assert int(on_gpu[:, 0].sum()) == len(rows_cpu.vectors) == 500
    np.testing.assert_allclose(on_gpu[:, 2:].sum(0), x.numpy().sum(0), atol=1e-3)

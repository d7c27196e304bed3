from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnprune import csr
from cnnprune.errors import CnnpruneError


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.int32)


def _weights():
    g = torch.Generator().manual_seed(0)
    yield torch.randn(8, 4, 3, 3, generator=g)
    for sparsity in (0.5, 0.9, 0.99):
        w = torch.randn(16, 8, 3, 3, generator=g)
        w[torch.rand(w.shape, generator=g) < sparsity] = 0
        yield w
    w = torch.zeros(4, 2000)
    w[0, 0], w[0, 1999], w[3, 700], w[2, 300], w[2, 299] = 1, 2, 3, -1, 5
    yield w  # long gaps (escapes) and an empty row
    yield torch.zeros(3, 5)


@pytest.mark.parametrize("encoder", [csr.encode_csr, csr.encode_delta8, csr.encode_bitmask, csr.encode_weight])
def test_every_layout_round_trips_bit_for_bit(encoder) -> None:
    for w in _weights():
        assert torch.equal(_bits(csr.decode_weight(encoder(w))), _bits(w))


def test_smallest_layout_never_beats_dense_by_losing() -> None:
    for w in _weights():
        enc = csr.encode_weight(w)
        assert csr._encoded_bytes(enc) <= w.numel() * 4


def test_index_dtypes_are_minimal() -> None:
    w = torch.zeros(4, 200)
    w[1, 150] = 1.0
    enc = csr.encode_csr(w)
    assert enc["col_indices"].dtype == torch.uint8 and enc["crow_indices"].dtype == torch.uint8


def test_file_round_trip_and_sizes(artifacts: Path) -> None:
    from cnnprune.model import load_state_dict

    for name in ("unpruned", "one_shot_50", "one_shot_90"):
        dense = load_state_dict(artifacts / f"{name}.pth")
        decoded = csr.load_state(artifacts / f"{name}.csr.pt")
        assert decoded.keys() == dense.keys()
        assert all(torch.equal(decoded[k], v) for k, v in dense.items())
        raw = torch.load(artifacts / f"{name}.csr.pt", weights_only=True)
        assert raw["format"] == csr.FORMAT
    for name in ("one_shot_50", "one_shot_75", "one_shot_90", "iterative_50", "iterative_75", "iterative_90"):
        assert (artifacts / f"{name}.csr.pt").stat().st_size < (artifacts / f"{name}.pth").stat().st_size
    assert (artifacts / "one_shot_90.csr.pt").stat().st_size <= 0.15 * (artifacts / "one_shot_90.pth").stat().st_size


def test_foreign_and_corrupt_files_refused(tmp_path: Path, artifacts: Path) -> None:
    torch.save({"a": torch.zeros(2)}, tmp_path / "foreign.csr.pt")
    with pytest.raises(CnnpruneError, match="not a cnnprune CSR file"):
        csr.load_state(tmp_path / "foreign.csr.pt")
    data = (artifacts / "one_shot_90.csr.pt").read_bytes()
    (tmp_path / "cut.csr.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CnnpruneError, match="truncated or corrupt"):
        csr.load_state(tmp_path / "cut.csr.pt")
    obj = torch.load(artifacts / "one_shot_90.csr.pt", weights_only=True)
    rows = next(v for v in obj["tensors"].values() if isinstance(v, dict) and "crow_indices" in v)
    rows["crow_indices"] = rows["crow_indices"].flip(0)
    torch.save(obj, tmp_path / "tampered.csr.pt")
    with pytest.raises(CnnpruneError, match="corrupt"):
        csr.load_state(tmp_path / "tampered.csr.pt")
    w = torch.randn(8, 8)
    w[w.abs() < 0.7] = 0
    bad = csr.encode_bitmask(w)
    bad["values"] = bad["values"][1:]
    with pytest.raises(CnnpruneError, match="mask and values disagree"):
        csr.decode_weight(bad)

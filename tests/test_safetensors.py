"""The safetensors reader/writer: round trips, interop, and refusal of damaged files."""
import os

import numpy as np
import pytest

from gradcore import safetensors as st


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(4),
            "step": np.array([7], np.int64), "mask": np.array([1, 0, 1], np.uint8), "empty": np.zeros((0, 3))}


def test_round_trip_is_bit_exact(tmp_path, arrays):
    path = str(tmp_path / "a.safetensors")
    st.save_file(arrays, path, {"architecture": '{"x": 1}'})
    loaded, meta = st.load_file(path)
    assert meta == {"architecture": '{"x": 1}'}
    assert set(loaded) == set(arrays)
    for k in arrays:
        assert loaded[k].dtype == arrays[k].dtype and loaded[k].shape == arrays[k].shape
        assert loaded[k].tobytes() == arrays[k].tobytes()


def test_interop_with_the_safetensors_package(tmp_path, arrays):
    sn = pytest.importorskip("safetensors.numpy")
    path = str(tmp_path / "a.safetensors")
    st.save_file(arrays, path)
    theirs = sn.load_file(path)
    for k in arrays:
        np.testing.assert_array_equal(theirs[k], arrays[k])
    sn.save_file(arrays, path)
    ours, _ = st.load_file(path)
    for k in arrays:
        np.testing.assert_array_equal(ours[k], arrays[k])


@pytest.mark.parametrize("cut", [0, 4, 8, 20, -1, -9])
def test_truncated_files_are_refused(tmp_path, arrays, cut):
    path = str(tmp_path / "a.safetensors")
    st.save_file(arrays, path)
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw[:cut] if cut >= 0 else raw[:cut])
    with pytest.raises(st.CheckpointError):
        st.load_file(path)


def test_malformed_headers_are_refused(tmp_path):
    path = str(tmp_path / "bad.safetensors")
    for header in (b"not json", b"[1, 2]", b'{"a": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}}',
                   b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}'):
        with open(path, "wb") as f:
            f.write(len(header).to_bytes(8, "little") + header + b"\0" * 4)
        with pytest.raises(st.CheckpointError):
            st.load_file(path)


def test_failed_save_keeps_previous_file(tmp_path, arrays):
    path = str(tmp_path / "a.safetensors")
    st.save_file(arrays, path)
    before = open(path, "rb").read()
    with pytest.raises(TypeError):
        st.save_file({"ok": np.ones(2), "bad": np.array(["s"])}, path)
    assert open(path, "rb").read() == before
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []

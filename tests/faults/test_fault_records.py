"""The record of a run cannot lie (issue 22): a checkpoint whose bytes changed is refused on
resume, naming the file, and left as it is; the run's JSON files are strict JSON."""

import pytest
import torch

import bilevel
from bilevel.training import checkpoint
from tests.test_training import train


def flip_one_float_of_h(directory):
    """Change one float of h in the bytes of directory/checkpoint.pt, nothing else."""
    path = directory / checkpoint.FILENAME
    saved = torch.load(path, weights_only=True)
    leaf = torch.utils._pytree.tree_leaves(saved["h"])[0]
    data, pattern = bytearray(path.read_bytes()), leaf.contiguous().numpy().tobytes()
    assert data.count(pattern) == 1
    start = data.index(pattern)
    data[start:start + leaf.element_size()] = (leaf.reshape(-1)[:1] + 1).numpy().tobytes()
    path.write_bytes(bytes(data))
    return path


def test_a_checkpoint_with_one_float_of_h_changed_is_refused_and_kept(tmp_path):
    train(out=tmp_path, steps=3)
    path = flip_one_float_of_h(tmp_path)
    damaged = path.read_bytes()
    with pytest.raises(bilevel.RunDirectoryError, match=rf"{path}.*(damaged|not a readable)"):
        train(out=tmp_path, steps=5, resume=True)
    assert path.read_bytes() == damaged  # nothing overwrote it


def test_a_checkpoint_rewritten_with_another_h_but_its_old_checksum_is_refused(tmp_path):
    train(out=tmp_path, steps=3)
    path = tmp_path / checkpoint.FILENAME
    saved = torch.load(path, weights_only=True)
    saved["h"] = torch.utils._pytree.tree_map(lambda leaf: leaf * 1.5, saved["h"])
    torch.save(saved, path)  # readable, but its checksum is the old content's
    with pytest.raises(bilevel.RunDirectoryError, match=rf"{path} is damaged"):
        train(out=tmp_path, steps=5, resume=True)
    del saved[checkpoint.CHECKSUM]
    torch.save(saved, path)
    with pytest.raises(bilevel.RunDirectoryError, match="records no checksum"):
        train(out=tmp_path, steps=5, resume=True)


def test_a_checkpoint_written_through_save_resumes(tmp_path):
    """What must stay accepted: the library's own writes, after a load round trip."""
    train(out=tmp_path, steps=2)
    checkpoint.save(tmp_path, checkpoint.load(tmp_path))
    assert train(out=tmp_path, steps=3, resume=True).summary["steps_completed"] == 3

"""Environment faults: a busy, unwritable or full output folder, corrupt weights and checkpoints,
missing or corrupt data. Each ends in one line and exit code 2, naming the file or folder."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomli_w

from rtk.errors import OutputError
from rtk.services.locking import LOCK_NAME, OutputLock
from rtk.services.state import atomic_write_text
from tests.helpers import TINY_RECIPE

WEIGHTS_RECIPE = """
[run]
name = "w"
device = "cpu"

[source]
model = "small-cnn"
channels = [8, 16]
feature_dim = 32
num_classes = 5
weights = "WEIGHTS"

[target]
dataset = "digits"
classes = [5, 6, 7, 8, 9]

[eval]
n = 20
sanity = false
"""


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    lines = result.stderr.strip().splitlines()  # the "rtk: N run(s) ..." banner may come first
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    print(errors[0])  # shown with -s: the exact line a user sees
    return errors[0]


@pytest.fixture
def lock_holder(tmp_path):
    """A separate process holding the lock on tmp_path/out until the test ends."""
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import sys, time
        from rtk.services.locking import OutputLock
        OutputLock({str(out)!r}).acquire()
        print("locked", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield out, proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_second_run_into_a_locked_folder_refuses_at_once(cli, tiny_recipe, lock_holder):
    out, pid = lock_holder
    message = one_line_error(cli("run", tiny_recipe, "--out", out, "--quiet"))
    assert str(out) in message and f"pid {pid}" in message and "in use by another rtk run" in message
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing of the holder's was touched


def test_resume_into_a_locked_folder_refuses_too(cli, tiny_recipe, lock_holder):
    out, pid = lock_holder
    message = one_line_error(cli("run", tiny_recipe, "--out", out, "--resume", "--quiet"))
    assert str(out) in message and f"pid {pid}" in message


def test_lock_is_exclusive_and_released(tmp_path):
    first = OutputLock(tmp_path / "out").acquire()
    with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
        OutputLock(tmp_path / "out").acquire()  # flock locks conflict between descriptors, even in one process
    with pytest.raises(OutputError, match="in use"):
        OutputLock(tmp_path / "out").check()
    first.release()
    with OutputLock(tmp_path / "out"):
        with pytest.raises(OutputError, match="in use"):
            OutputLock(tmp_path / "out").check()
    OutputLock(tmp_path / "out").check()  # released on exit: no error


def test_runner_holds_the_lock_while_running_and_releases_it(tiny_recipe, tmp_path, monkeypatch, one_thread):
    from rtk.config.recipe import load_recipe
    from rtk.registry import default_registry
    from rtk.stages.runner import Runner

    out = tmp_path / "out"
    recipe = load_recipe(tiny_recipe, None, ["source.train.epochs=1", "transfer.epochs=1", "eval.n=10",
                                             "eval.sanity=false"])
    runner = Runner(recipe, default_registry(), out, show_progress=False)
    seen = []

    def point(index, spec):
        with pytest.raises(OutputError, match="in use"):
            OutputLock(out).check()
        seen.append(index)
        return {"id": spec.id, "params": {}, "metrics": {}}

    monkeypatch.setattr(runner, "run_point", point)
    runner.run()
    assert seen == [0]
    OutputLock(out).acquire().release()  # free again after the run


def _full_disk_on(monkeypatch, name: str):
    """os.replace fails with ENOSPC for files called ``name``, as on a full disk."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_full_disk_keeps_the_previous_complete_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_text(path, '{"complete": true}\n')
    _full_disk_on(monkeypatch, "results.json")
    with pytest.raises(OutputError) as info:
        atomic_write_text(path, '{"complete": false, "runs": [...]}\n')
    assert str(info.value) == f"no space left on device while writing {path}: free space or choose another --out"
    assert path.read_text() == '{"complete": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # the temp file is gone


def test_full_disk_during_a_run_is_one_line(cli, tiny_recipe, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _full_disk_on(monkeypatch, "recipe.resolved.toml")
    message = one_line_error(cli("run", tiny_recipe, "--out", out, "--quiet"))
    assert message == (f"error: no space left on device while writing {out / 'recipe.resolved.toml'}: free space or"
                       " choose another --out")
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    assert not (out / "results.json").exists()


def test_full_disk_while_saving_weights(tmp_path, monkeypatch):
    import safetensors.torch

    from rtk.models import save_weights

    def save_file(state, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    import torch

    with pytest.raises(OutputError, match="no space left on device while writing .*m.safetensors"):
        save_weights(torch.nn.Linear(2, 2), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_other_os_errors_are_one_line(cli, tiny_recipe, tmp_path, monkeypatch):
    from rtk.stages.runner import Runner

    def prepare(self):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "cache" / "x.bin"))

    monkeypatch.setattr(Runner, "prepare", prepare)
    message = one_line_error(cli("run", tiny_recipe, "--out", tmp_path / "out", "--quiet"))
    assert "no space left on device while writing" in message and "x.bin" in message


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into a 0o500 folder regardless; test_unwritable_output_simulated covers it")
def test_unwritable_output_folder(cli, tiny_recipe, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        message = one_line_error(cli("run", tiny_recipe, "--out", parent / "out", "--quiet"))
    finally:
        parent.chmod(0o700)
    assert "cannot write" in message and str(parent / "out") in message and "choose another --out" in message


def test_unwritable_output_simulated(cli, tiny_recipe, tmp_path, monkeypatch):
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == tmp_path / "ro" / "out":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    message = one_line_error(cli("run", tiny_recipe, "--out", tmp_path / "ro" / "out", "--quiet"))
    assert message == (f"error: cannot write {tmp_path / 'ro' / 'out' / LOCK_NAME}: Permission denied; choose"
                       " another --out")


def _small_cnn_weights(path: Path) -> Path:
    from rtk.models import save_weights
    from rtk.registry import default_registry
    from rtk.config.spec import resolve
    from rtk.config.recipe import load_recipe

    recipe_path = path.parent / "make.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    recipe_path.write_text(WEIGHTS_RECIPE.replace('weights = "WEIGHTS"\n', ""))
    spec = resolve(load_recipe(recipe_path), default_registry())[0]
    recipe_path.unlink()
    save_weights(spec.source.model.build(num_classes=5), path)
    return path


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_corrupt_source_weights_name_the_file(cli, write_recipe, tmp_path, damage, suffix):
    weights = _small_cnn_weights(tmp_path / "w.safetensors")
    if suffix == ".pt":
        import torch

        from rtk.models import read_state_dict

        torch.save(read_state_dict(weights), tmp_path / "w.pt")
        weights = tmp_path / "w.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else os.urandom(len(data)))
    recipe = write_recipe(WEIGHTS_RECIPE.replace("WEIGHTS", weights.name))
    message = one_line_error(cli("run", recipe, "--out", tmp_path / "out", "--quiet"))
    assert f"cannot read weights {weights}" in message


def _interrupted_run(tmp_path: Path, recipe: Path) -> Path:
    """The folder a run killed during evaluation leaves: header, pending run info, target checkpoint."""
    from rtk.config.recipe import load_recipe

    out = tmp_path / "out"
    (out / "eval-state").mkdir(parents=True)
    (out / "recipe.resolved.toml").write_text(tomli_w.dumps(load_recipe(recipe).raw))
    (out / "eval-state" / "run-0.json").write_text('{"source": {}, "seconds": 1.0, "num_classes": 5}\n')
    _small_cnn_weights(out / "checkpoints" / "run-0.safetensors")
    return out


def test_resume_with_a_truncated_checkpoint_names_it(cli, tiny_recipe, tmp_path):
    out = _interrupted_run(tmp_path, tiny_recipe)
    checkpoint = out / "checkpoints" / "run-0.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    message = one_line_error(cli("run", tiny_recipe, "--out", out, "--resume", "--quiet"))
    assert f"cannot read weights {checkpoint}" in message


def test_resume_with_a_corrupt_pending_file_names_it(cli, tiny_recipe, tmp_path):
    out = _interrupted_run(tmp_path, tiny_recipe)
    (out / "eval-state" / "run-0.json").write_text('{"source": {')
    message = one_line_error(cli("run", tiny_recipe, "--out", out, "--resume", "--quiet"))
    assert str(out / "eval-state" / "run-0.json") in message


def test_resume_with_a_corrupt_eval_state_names_it(cli, tiny_recipe, tmp_path):
    out = _interrupted_run(tmp_path, tiny_recipe)
    (out / "eval-state" / "run-0.safetensors").write_bytes(b"\x00" * 40)
    message = one_line_error(cli("run", tiny_recipe, "--out", out, "--resume", "--quiet"))
    assert str(out / "eval-state" / "run-0.safetensors") in message


def _mnist_target(root: Path) -> str:
    return TINY_RECIPE.replace('[target]\ndataset = "digits"', f'[target]\ndataset = "mnist"\nroot = "{root}"')


def test_empty_data_folder_fails_before_writing(cli, write_recipe, tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    out = tmp_path / "out"
    message = one_line_error(cli("run", write_recipe(_mnist_target(empty)), "--out", out, "--quiet"))
    assert "mnist" in message and str(empty) in message
    assert not out.exists()


def test_truncated_mnist_file_fails_before_writing(cli, write_recipe, tmp_path):
    import struct

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 20), ("t10k", 10)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 0x803, n, 28, 28) + bytes(n * 28 * 28))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 0x801, n) + bytes(range(n)))
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:500])
    out = tmp_path / "out"
    message = one_line_error(cli("run", write_recipe(_mnist_target(tmp_path / "data")), "--out", out, "--quiet"))
    assert "corrupt or truncated" in message
    assert not out.exists()

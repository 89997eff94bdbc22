"""`sphinxx model export` writes the whole multimodal model; `sphinxx.model.exported` opens it alone.

The checkpoints are real (tiny `debug` / `debug-moe` SphinxX saved by the training Checkpointer,
as in test_export.py). The loader runs in a separate interpreter whose site-packages holds only
torch, transformers, safetensors, Pillow and what they require, and sphinxx (no Ray, DeepSpeed,
kopf, Kubernetes, MLflow, boto3, s3fs, omegaconf, ...: not blocked, not installed), as on a
machine that ran `pip install --no-deps sphinxx` beside those four. Its
greedy answer tokens for an image and a question must equal those of `sphinxx generate` on the
checkpoint (the same code path the command runs: download, rebuild, load, template, processor).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.jobs.test_export import committed_run
from tests.jobs.test_generate import write_image, write_tokenizer

REPO = Path(__file__).resolve().parents[2]
# What the loader's interpreter has installed: these distributions and what they require (their
# own dependency closure, as pip would install it), and sphinxx itself (its editable hook).
INSTALLED = ("torch", "transformers", "safetensors", "pillow")
# Import names of the training, cluster and storage stack (and the base install's extras), which
# must not be importable there: the check that the interpreter is as bare as claimed.
ABSENT = (
    "ray", "deepspeed", "kopf", "kubernetes", "mlflow", "boto3", "botocore", "s3fs", "aiobotocore",
    "omegaconf", "pyarrow", "sentencepiece", "moto", "psycopg2",
)  # fmt: skip
QUESTION = "w3 w7 w11"
NEW = 8

LOADER = r"""
import importlib.util, json, sys
absent = [n for n in ABSENT if importlib.util.find_spec(n) is not None]
assert not absent, f"the bare interpreter still has {absent}"
from sphinxx.model.exported import load_exported
out = {}
for name, folder in FOLDERS.items():
    model = load_exported(folder)
    config = model.generation_config(max_new_tokens=NEW)
    rows = model.generate([(QUESTION, IMAGE), (QUESTION, None)], config)
    out[name] = [r["tokens"] for r in rows] + [model.answer(QUESTION, image=IMAGE, max_new_tokens=NEW)]
from sphinxx.model.exported import main
argv = [FOLDERS["debug"], "--image", IMAGE, "--prompt", QUESTION, "--max-new-tokens", str(NEW), "--json"]
assert main(argv) == 0
exec(SNIPPET)  # docs/evaluation.md's block, as written but for the paths
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ABSENT or m.startswith(
    ("sphinxx.jobs", "sphinxx.storage", "sphinxx.operator", "sphinxx.sweep", "sphinxx.schema.run")))
print(json.dumps({"answers": out, "heavy": heavy}))
"""


def requirement_closure(roots: tuple[str, ...]) -> list[metadata.Distribution]:
    """The installed distributions `roots` need: themselves and their requirements, recursively
    (extras left out, environment markers evaluated)."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            found[name] = dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement this environment lacks
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def bare_site(where: Path) -> Path:
    """A site-packages of links to this interpreter's entries of INSTALLED's closure and sphinxx."""
    site = Path(sysconfig.get_paths()["purelib"])
    where.mkdir()
    tops = {p.name for p in site.glob("*sphinxx*")}  # the editable install's hook and metadata
    for dist in requirement_closure(INSTALLED):
        tops.update(f.parts[0] for f in dist.files or [] if f.parts[0] != "..")
    for name in sorted(tops):
        if (site / name).exists():
            (where / name).symlink_to(site / name)
    return where


def docs_snippet(folder: str, tasks: str) -> str:
    """The Python block of docs/evaluation.md, "Evaluating outside a sweep", on our paths."""
    text = (REPO / "docs" / "evaluation.md").read_text().split("## Evaluating outside a sweep", 1)[1]
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert "/data/eval/RUN" in block and "/data/tasks/pope.jsonl" in block
    return block.replace("/data/eval/RUN", folder).replace("/data/tasks/pope.jsonl", tasks)


def write_tasks(path: Path, image: str) -> str:
    """Two POPE-style records in our task format about the test image (answers 'yes' / 'no')."""
    rows = [
        {"id": f"q{i}", "task": "pope", "split": "test", "images": [Path(image).as_uri()],
         "question": q, "prompt": f"{q}\nAnswer the question using a single word or phrase.",
         "metric": "pope", "answers": [a], "category": "random"}
        for i, (q, a) in enumerate([("Is there a w3 in the image?", "yes"), ("Is there a w9?", "no")])
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run_loader(tmp_path: Path, folders: dict[str, str], image: str) -> tuple[dict, list[str]]:
    """The loader's answers (and what the docs' block printed) from the bare interpreter."""
    site = bare_site(tmp_path / "bare-site")
    snippet = docs_snippet(folders["debug"], write_tasks(tmp_path / "pope.jsonl", image))
    prelude = (
        f"import site; site.addsitedir({str(site)!r})\n"
        f"ABSENT, FOLDERS, IMAGE = {ABSENT!r}, {folders!r}, {image!r}\n"
        f"QUESTION, NEW, SNIPPET = {QUESTION!r}, {NEW}, {snippet!r}\n"
    )
    # -S: no site-packages but the bare one; -I would also drop the editable install's finder hook.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-S", "-c", prelude + LOADER], capture_output=True, text=True, cwd=tmp_path,
        env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]), lines[:-1]


def generate_tokens(checkpoint: str, image: str) -> list[list[int]]:
    """The greedy answer tokens `sphinxx generate` computes for QUESTION with `image` and without
    (its own path: download, rebuild, load, template, processor), one request at a time."""
    from sphinxx.jobs.generate import DEFAULT_STOP, Request, load_generator
    from sphinxx.model.generate import GenerationConfig, generate

    generator = load_generator(checkpoint)
    config = GenerationConfig(
        max_new_tokens=NEW, eos_ids=(generator.encoder.eos_id,), stop_strings=(DEFAULT_STOP,)
    )
    prompts = [generator.prompt(Request(QUESTION, image)), generator.prompt(Request(QUESTION))]
    return [generate(generator.model, [p], config, decode=generator.decode)[0].tokens for p in prompts]


def documented_files() -> str:
    text = (REPO / "docs" / "model.md").read_text()
    return text[text.index("## Export for standard evaluation") : text.index("## Generation")]


@pytest.mark.slow  # two checkpoints exported and answered three ways, and a second interpreter (~1 min)
def test_dense_and_moe_exports_answer_as_sphinxx_generate_without_the_training_stack(
    tmp_path: Path, capsys
) -> None:
    from sphinxx.cli import main
    from sphinxx.jobs.export import export_checkpoint

    write_tokenizer(tmp_path / "tok")
    image = write_image(tmp_path / "wide.png", (300, 120), seed=1)
    folders, want = {}, {}
    for flavor in ("debug", "debug-moe"):
        store, _ = committed_run((tmp_path / flavor).as_uri(), flavor, str(tmp_path / "tok"), seq_len=1024)
        out = tmp_path / f"export-{flavor}"
        export_checkpoint(store.root, str(out))
        folders[flavor] = str(out)
        want[flavor] = generate_tokens(store.root, image)
        assert len(want[flavor][0]) >= 1
        rc = main(["generate", store.root, "--image", image, "--prompt", QUESTION, "--max-new-tokens", "8"])
        assert rc == 0
        want[flavor].append(capsys.readouterr().out.strip())

    got, printed = run_loader(tmp_path, folders, image)
    assert got["heavy"] == []
    assert printed[-1].startswith("pope {") and "'accuracy'" in printed[-1] and "'yes_ratio'" in printed[-1]
    command = json.loads(printed[-2])  # python -m sphinxx.model.exported FOLDER --image ... --json
    assert command["tokens"] == want["debug"][0] and command["answer"] == want["debug"][2]
    for flavor in folders:
        tokens_image, tokens_text, answer = got["answers"][flavor]
        assert tokens_image == want[flavor][0], flavor
        assert tokens_text == want[flavor][1], flavor
        assert answer == want[flavor][2], flavor
    assert want["debug"][0] != want["debug-moe"][0]  # two different models, not one answer twice

    # The layout: exactly the documented files, each named in docs/model.md, all listed in the manifest.
    dense = Path(folders["debug"])
    files = sorted(str(p.relative_to(dense)) for p in dense.rglob("*") if p.is_file())
    assert files == [
        "config.json", "generation_config.json", "model.safetensors", "sphinxx_multimodal.json",
        "sphinxx_multimodal.safetensors", "tokenizer.json", "tokenizer_config.json",
        "vision/convnext/config.json", "vision/convnext/model.safetensors",
        "vision/dinov2/config.json", "vision/dinov2/model.safetensors",
    ]  # fmt: skip
    docs = documented_files()
    for name in files:
        assert f"`{name}`" in docs or f"`{name.rsplit('/', 1)[0]}/`" in docs, name
    manifest = json.loads((dense / "sphinxx_multimodal.json").read_text())
    assert manifest["files"] == [f for f in files if f != "sphinxx_multimodal.json"]
    assert manifest["processor"]["grid"] == 2 and manifest["template"]["stop"] == ["###"]


def test_towers_open_in_transformers_and_the_manifest_records_the_run(tmp_path: Path) -> None:
    """Each tower folder is what transformers writes: `ConvNextModel.from_pretrained` loads it with
    the checkpoint's weights (independent of our loader)."""
    import torch
    from transformers import ConvNextModel, Dinov2Model

    from sphinxx.jobs.export import export_checkpoint

    write_tokenizer(tmp_path / "tok")
    store, model = committed_run((tmp_path / "runs").as_uri(), "debug", str(tmp_path / "tok"))
    out = tmp_path / "out"
    export_checkpoint(store.root, str(out), with_tokenizer=False)
    state = model.state_dict()
    for tower, cls in (("convnext", ConvNextModel), ("dinov2", Dinov2Model)):
        loaded = cls.from_pretrained(str(out / "vision" / tower)).state_dict()
        ours = {
            k.removeprefix(f"vision.{tower}.model."): v
            for k, v in state.items()
            if k.startswith(f"vision.{tower}.")
        }
        assert set(loaded) == set(ours)
        assert all(torch.equal(loaded[k], ours[k]) for k in ours), tower
    manifest = json.loads((out / "sphinxx_multimodal.json").read_text())
    assert manifest["llm"]["args"]["dim"] == model.args.llm.dim and manifest["llm"]["family"] == "llama"
    assert manifest["vision"]["args"]["dinov2"]["hidden_size"] == model.args.vision.dinov2.hidden_size
    assert manifest["source"]["step"] == 3 and manifest["token_ids"] is None


def test_a_folder_missing_a_file_is_a_clear_error(tmp_path: Path, capsys) -> None:
    from sphinxx.jobs.export import export_checkpoint
    from sphinxx.model.exported import ExportedFolderError, load_exported, main

    write_tokenizer(tmp_path / "tok")
    store, _ = committed_run((tmp_path / "runs").as_uri(), "debug", str(tmp_path / "tok"))
    out = tmp_path / "out"
    export_checkpoint(store.root, str(out))
    projector = out / "sphinxx_multimodal.safetensors"
    good = projector.read_bytes()
    projector.write_bytes(good[: len(good) // 2])  # a copy cut short
    with pytest.raises(
        ExportedFolderError, match=r"sphinxx_multimodal\.safetensors: not a readable safetensors"
    ):
        load_exported(str(out))
    projector.write_bytes(good)
    (out / "vision" / "dinov2" / "model.safetensors").unlink()
    capsys.readouterr()  # the export's progress lines
    with pytest.raises(
        ExportedFolderError, match=r"lists vision/dinov2/model\.safetensors but the folder lacks it"
    ):
        load_exported(str(out))
    assert main([str(out), "--prompt", QUESTION]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vision/dinov2/model.safetensors" in err
    (out / "sphinxx_multimodal.json").unlink()
    with pytest.raises(ExportedFolderError, match="sphinxx_multimodal.json: missing"):
        load_exported(str(out))
    with pytest.raises(ExportedFolderError, match="no such folder"):
        load_exported(str(tmp_path / "nowhere"))


def test_a_tower_loaded_from_its_uri_is_exported_from_there(tmp_path: Path, monkeypatch) -> None:
    """Checkpoints leave out towers a run loads from URIs; the export stages them from the URI."""
    import torch
    from safetensors.torch import load_file

    from sphinxx.jobs.export import export_checkpoint
    from sphinxx.model.exported import load_exported
    from tests.model.test_vision import DEBUG, timm_convnext_state

    monkeypatch.setenv("SPHINXX_STAGE_DIR", str(tmp_path / "node-cache"))
    write_tokenizer(tmp_path / "tok")
    tower = tmp_path / "towers" / "open_clip_pytorch_model.bin"
    tower.parent.mkdir()
    torch.save(timm_convnext_state(DEBUG.convnext, seed=5), tower)
    store, model = committed_run(
        (tmp_path / "runs").as_uri(), "debug", str(tmp_path / "tok"), convnext_weights=tower.as_uri()
    )
    from sphinxx.jobs.export import CheckpointTensors

    store.download(3, str(tmp_path / "ckpt"))
    in_checkpoint = set(CheckpointTensors(str(tmp_path / "ckpt" / "model")))
    assert not any(k.startswith("vision.convnext.") for k in in_checkpoint)  # as the job saves
    assert any(k.startswith("vision.dinov2.") for k in in_checkpoint)
    out = tmp_path / "out"
    export_checkpoint(store.root, str(out))
    manifest = json.loads((out / "sphinxx_multimodal.json").read_text())
    assert manifest["tower_uris"]["convnext"] == tower.as_uri()
    written = load_file(str(out / "vision" / "convnext" / "model.safetensors"))
    state = model.state_dict()
    assert written and all(torch.equal(v, state[f"vision.convnext.model.{k}"]) for k, v in written.items())
    loaded = load_exported(str(out)).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items()), "the loader's model is the trained one"


def test_the_recorded_template_writes_prompts_as_training_does() -> None:
    """The loader renders the template from the pieces the export records (jobs.export.TEMPLATE);
    the result must be the job's own `render_prompt`, history and `<image>` markers included."""
    from sphinxx.jobs.data.template import render_prompt
    from sphinxx.jobs.export import TEMPLATE
    from sphinxx.model.exported import template_of

    template = template_of(json.loads(json.dumps(TEMPLATE)))  # as read back from the manifest
    history = [("<image>\nWhat is it?", "A cat."), ("And its colour?", "Black.")]
    for question, turns in (("<image> How many?", []), ("Why?", history), ("plain", history[:1])):
        assert template.render(question, turns) == render_prompt(question, turns)
    assert template.stop == ("###",)


def test_a_bf16_export_loads_with_the_rounded_weights(tmp_path: Path) -> None:
    """`--dtype bf16` casts every part; the loader reads them back (fp32 by default) unchanged."""
    import torch

    from sphinxx.jobs.export import export_checkpoint
    from sphinxx.model.exported import load_exported

    write_tokenizer(tmp_path / "tok")
    store, model = committed_run((tmp_path / "runs").as_uri(), "debug-moe", str(tmp_path / "tok"))
    out = tmp_path / "out"
    export_checkpoint(store.root, str(out), dtype=torch.bfloat16)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = load_exported(str(out)).model.state_dict()
    for name, value in model.state_dict().items():
        assert loaded[name].dtype == torch.float32
        assert torch.equal(loaded[name], value.to(torch.bfloat16).float()), name
    half = load_exported(str(out), dtype=torch.bfloat16).model
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())

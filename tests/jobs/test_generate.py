"""`sphinxx generate` (jobs/generate.py, jobs/generate_cli.py): a committed checkpoint answers.

The checkpoints are real: tiny `debug` / `debug-moe` SphinxX models saved by the training
Checkpointer into a CheckpointStore (file:// and the moto S3 server), as `sphinxx model export`'s
tests save them. The reference is the in-memory model that was saved, fed a prompt built here by
hand from the template's text and the tokenizer: the command, which downloads, rebuilds and
loads the model, must give its tokens.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from PIL import Image

from sphinxx.cli import main
from tests.jobs._tiny import VOCAB
from tests.jobs.test_export import committed_run

WORDS = ["<unk>", "<s>", "</s>", "<pad>", *(f"w{i}" for i in range(VOCAB - 4))]


def spoken(ids: list[int]) -> str:
    """The answer text of `ids`: the words, special tokens left out (as the command decodes)."""
    return " ".join(WORDS[i] for i in ids if i >= 4)


def write_tokenizer(folder: Path) -> None:
    """A word-level tokenizer with one word per id of the tiny model, so every id decodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(str(folder))


def write_image(path: Path, size: tuple[int, int], seed: int) -> str:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=gen, dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)
    return str(path)


def reference_tokens(model, tokenizer_dir: Path, question: str, image: str | None, new: int) -> list[int]:
    """Greedy tokens of the saved model itself, the prompt written out here from the template."""
    from transformers import AutoTokenizer

    from sphinxx.jobs.data.template import HUMAN, SEP, SYSTEM
    from sphinxx.model.anyres import AnyResConfig, process_image
    from sphinxx.model.generate import GenerationConfig, Prompt, generate

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    text = SYSTEM + "\n" + SEP + HUMAN + question + SEP + " Assistant:"
    ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]
    processed = None
    if image is not None:
        processed = process_image(Image.open(image).convert("RGB"), AnyResConfig(grid=2))
    config = GenerationConfig(max_new_tokens=new, eos_ids=(tok.eos_token_id,))
    return generate(model, [Prompt(ids, processed)], config)[0].tokens


def run_cli(argv: list[str], capsys) -> tuple[int, list[dict], str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


def test_image_and_prompt_answer_as_the_saved_model(tmp_path: Path, capsys) -> None:
    write_tokenizer(tmp_path / "tok")
    store, model = committed_run((tmp_path / "runs").as_uri(), "debug", str(tmp_path / "tok"), seq_len=1024)
    assert model.args.image.grid == 2  # the reference's layout (the debug preset's data.canvas 448)
    image = write_image(tmp_path / "wide.png", (300, 120), seed=1)
    question = "w3 w7 w11"
    want = reference_tokens(model, tmp_path / "tok", question, image, new=8)
    argv = ["generate", store.root, "--image", image, "--prompt", question, "--max-new-tokens", "8"]
    rc, results, _ = run_cli([*argv, "--json"], capsys)
    assert rc == 0 and len(results) == 1
    answer = results[0]["answer"]
    words = spoken(want).split()
    assert answer == spoken(want) and results[0]["new_tokens"] == len(want) == 8
    assert results[0]["finish"] == "length" and results[0]["image"] == image
    # A stop string (the third word) cuts the answer before it; without --json only answers print.
    assert main([*argv, "--stop", words[2]]) == 0
    assert capsys.readouterr().out.strip() == answer[: answer.index(words[2])].strip()
    # Text-only question: no image block at all.
    rc, text_only, _ = run_cli(
        ["generate", store.root, "--prompt", question, "--max-new-tokens", "5", "--json"], capsys
    )
    assert rc == 0
    assert text_only[0]["answer"] == " ".join(
        WORDS[i] for i in reference_tokens(model, tmp_path / "tok", question, None, 5)
    )


def test_requests_file_from_s3_mixtral(tmp_path: Path, s3_bucket: str, monkeypatch, capsys) -> None:
    from sphinxx.storage import open_fs

    monkeypatch.setenv("SPHINXX_STAGE_DIR", str(tmp_path / "stage"))
    write_tokenizer(tmp_path / "tok")
    tokenizer = f"s3://{s3_bucket}/tokenizers/generate-words"
    fs = open_fs(tokenizer)
    for name in os.listdir(tmp_path / "tok"):
        fs.write_bytes(f"{tokenizer}/{name}", (tmp_path / "tok" / name).read_bytes())
    image_uri = f"s3://{s3_bucket}/images/tall.png"
    fs.write_bytes(image_uri, Path(write_image(tmp_path / "tall.png", (90, 270), seed=2)).read_bytes())
    store, model = committed_run(f"s3://{s3_bucket}/sweeps", "debug-moe", tokenizer, seq_len=1024)
    lines = [
        {"id": "a", "prompt": "w1 w2", "image": image_uri},
        {"id": "b", "prompt": "w40 w41 w42 w43 w44 w45"},
        {"id": "c", "prompt": "w9", "image": str(tmp_path / "tall.png")},
    ]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    rc, batched, _ = run_cli(
        ["generate", store.root, "--requests", str(requests), "--max-new-tokens", "6", "--json"], capsys
    )
    assert rc == 0 and [r["id"] for r in batched] == ["a", "b", "c"]
    # Batched (three rows of different lengths and layouts) equals one request at a time.
    rc, alone, _ = run_cli(
        [
            "generate",
            store.root,
            "--requests",
            str(requests),
            "--max-new-tokens",
            "6",
            "--json",
            "--batch-size",
            "1",
        ],
        capsys,
    )
    assert rc == 0 and [r["answer"] for r in alone] == [r["answer"] for r in batched]
    want = reference_tokens(model, tmp_path / "tok", "w40 w41 w42 w43 w44 w45", None, 6)
    assert batched[1]["answer"] == spoken(want)


def test_bad_requests_and_images_are_one_line_errors(tmp_path: Path, capsys) -> None:
    write_tokenizer(tmp_path / "tok")
    store, _ = committed_run((tmp_path / "runs").as_uri(), "debug", str(tmp_path / "tok"), seq_len=1024)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "w1"}\n{"question": "w2"}\n')
    assert main(["generate", store.root, "--requests", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "question" in err and len(err.strip().splitlines()) == 1
    not_image = tmp_path / "notes.txt"
    not_image.write_text("not an image")
    assert main(["generate", store.root, "--image", str(not_image), "--prompt", "w1"]) == 2
    assert "notes.txt: not a readable image" in capsys.readouterr().err
    assert main(["generate", store.root, "--image", str(tmp_path / "missing.png"), "--prompt", "w1"]) != 0
    assert "missing.png" in capsys.readouterr().err
    assert main(["generate", store.root]) == 2
    assert "--prompt" in capsys.readouterr().err
    assert main(["generate", store.root, "--prompt", "w1", "--step", "9"]) == 1
    assert "no checkpoint at step 9" in capsys.readouterr().err
    assert main(["generate", store.root, "--prompt", "w1", "--top-p", "0"]) == 2
    assert "top_p" in capsys.readouterr().err

"""Real-model tokenizer layouts load without remote code and give SentencePiece's own ids.

A small SentencePiece BPE model is trained here with Llama's settings (byte fallback, digits split,
identity normalisation, whitespace kept, <unk>/<s>/</s> = 0/1/2) and laid out as InternLM2,
Llama (SentencePiece only) and TinyLlama/Mixtral (tokenizer.model + tokenizer.json) publish their
tokenizers. The reference for every id is `sentencepiece.SentencePieceProcessor` on the same file.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest

from sphinxx.jobs.data.template import IGNORE_INDEX, ConversationEncoder, load_tokenizer, render
from sphinxx.jobs.data.tokenizer import (
    PROBE_TEXT,
    NoTokenizerFilesError,
    first_difference,
    loader_for,
    tokenizer_files,
)

from .test_template import TURNS

VOCAB = 600
CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "### Human: What color is the square?",
    "### Assistant: The square is red. There are 3 shapes.",
    "What is 12 + 30? 12 + 30 = 42.",
    "The quick brown fox jumps over the lazy dog.",
    "你好，世界。今天天气很好。我们一起学习。",
    "    def f(x):        return x * 2",
]
TEXTS = [
    "Hello world",
    " one leading space",
    "   three leading spaces",
    "two  inside   spaces and trailing  ",
    "line one\nline two\n\n\nafter blank lines",
    "\nstarts with a newline",
    "tab\tand 1234567890 digits, 3.14159",
    "你好，世界。今天天气很好",
    "mixed 中文 and English 42",
    "émoji 🙂 and ünïcödé not in the corpus",
    render(TURNS).text,
]
INTERNLM2_CONFIG = {
    "auto_map": {
        "AutoTokenizer": [
            "tokenization_internlm2.InternLM2Tokenizer",
            "tokenization_internlm2_fast.InternLM2TokenizerFast",
        ]
    },
    "bos_token": "<s>",
    "clean_up_tokenization_spaces": False,
    "eos_token": "</s>",
    "model_max_length": 1000000000000000019884624838656,
    "pad_token": "</s>",
    "tokenizer_class": "InternLM2Tokenizer",
    "unk_token": "<unk>",
}
SPECIAL = {
    "content": "",
    "lstrip": False,
    "normalized": False,
    "rstrip": False,
    "single_word": False,
    "special": True,
}
LLAMA_CONFIG = {  # TinyLlama-1.1B / Llama-2-hf's tokenizer_config.json, trimmed
    "add_bos_token": True,
    "add_eos_token": False,
    "added_tokens_decoder": {
        str(i): {**SPECIAL, "content": t} for i, t in enumerate(["<unk>", "<s>", "</s>"])
    },
    "bos_token": "<s>",
    "clean_up_tokenization_spaces": False,
    "eos_token": "</s>",
    "legacy": False,
    "model_max_length": 2048,
    "pad_token": None,
    "padding_side": "right",
    "sp_model_kwargs": {},
    "tokenizer_class": "LlamaTokenizer",
    "unk_token": "<unk>",
}


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SentencePiece BPE model trained like Llama's, in well under a second."""
    import sentencepiece

    rng = random.Random(0)
    lines = [f"{rng.choice(CORPUS)} {rng.randint(0, 9999)}" for _ in range(600)]
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        model_type="bpe",
        vocab_size=VOCAB,
        hard_vocab_limit=False,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("spm") / "tokenizer.model"
    path.write_bytes(out.getvalue())
    return path


@pytest.fixture(scope="module")
def sp(sp_model: Path):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(sp_model))


def _write(folder: Path, files: dict[str, object]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        data = value if isinstance(value, bytes) else json.dumps(value, indent=2).encode()
        (folder / name).write_bytes(data)
    return folder


def internlm2_files(sp_model: Path) -> dict[str, object]:
    """internlm/internlm2-7b's tokenizer files: no tokenizer.json, an auto_map to remote code. The
    remote code here raises when imported: loading must not run it."""
    trap = b'raise RuntimeError("remote tokenizer code ran")\n'
    return {
        "tokenizer.model": sp_model.read_bytes(),
        "tokenizer_config.json": INTERNLM2_CONFIG,
        "special_tokens_map.json": {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "</s>",
            "unk_token": "<unk>",
        },
        "tokenization_internlm2.py": trap,
        "tokenization_internlm2_fast.py": trap,
    }


def llama2_tokenizer_json(sp_model: Path) -> bytes:
    """tokenizer.json as Llama 2, TinyLlama and Mixtral publish it (transformers' legacy Llama
    conversion: Prepend + Replace normaliser, no pre-tokenizer, BOS post-processor), with the
    vocabulary and merges transformers' SentencePieceExtractor reads from the model."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    extracted = SentencePieceExtractor(str(sp_model)).extract(BPE)
    tok = Tokenizer(
        BPE(extracted["vocab"], extracted["merges"], unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    return tok.to_str().encode()


@pytest.fixture(scope="module")
def layouts(sp_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    special_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    return {
        "internlm2": _write(root / "internlm2", internlm2_files(sp_model)),
        "llama-sentencepiece": _write(
            root / "llama-sp",
            {"tokenizer.model": sp_model.read_bytes(), "tokenizer_config.json": LLAMA_CONFIG},
        ),
        "llama-tokenizer-json": _write(
            root / "llama-json",
            {
                "tokenizer.model": sp_model.read_bytes(),
                "tokenizer.json": llama2_tokenizer_json(sp_model),
                "tokenizer_config.json": LLAMA_CONFIG,
                "special_tokens_map.json": special_map,
            },
        ),
    }


LAYOUTS = ["internlm2", "llama-sentencepiece", "llama-tokenizer-json"]


def _pieces_text(sp, ids: list[int]) -> str:
    """The text SentencePiece's pieces spell, spaces and bytes literally (no dummy prefix removed)."""
    out = bytearray()
    for i in ids:
        piece = sp.id_to_piece(i)
        out += bytes([int(piece[3:5], 16)]) if sp.is_byte(i) else piece.replace("▁", " ").encode()
    return out.decode()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ids_are_sentencepieces_own(layouts, sp, layout: str) -> None:
    tok = load_tokenizer(str(layouts[layout]))  # trust_remote_code stays False
    assert tok.is_fast
    for text in [*TEXTS, PROBE_TEXT]:
        ids = sp.encode(text)
        assert tok(text, add_special_tokens=False)["input_ids"] == ids, text
        assert tok(text)["input_ids"] == [1, *ids], text  # add_bos_token=True, add_eos_token=False
        assert tok.decode(ids) == sp.decode(ids) == text, text


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conversation_encoder_gets_bos_eos_pad_and_labels(layouts, sp, layout: str) -> None:
    tok = load_tokenizer(str(layouts[layout]))
    encoder = ConversationEncoder(tok, 4096)
    # BOS <s>=1, EOS </s>=2; pad: InternLM2 names </s>, the Llama family none (EOS stands in).
    assert (encoder.bos_id, encoder.eos_id, encoder.pad_id) == (1, 2, 2)
    assert tok.pad_token_id == (2 if layout == "internlm2" else None)
    enc = encoder.encode(TURNS)
    assert enc.tokens == [1, *sp.encode(render(TURNS).text), 2]
    labelled = [label for label in enc.labels if label != IGNORE_INDEX]
    assert _pieces_text(sp, labelled) == "".join(" " + a + "\n###" for _, a in TURNS)
    assert enc.labels[0] == enc.labels[-1] == IGNORE_INDEX


def test_internlm2_chat_tokens_past_the_model_load(sp_model: Path, sp, tmp_path: Path) -> None:
    """InternLM2-chat's config adds chat markers by id; they encode whole, other text is unchanged."""
    files = internlm2_files(sp_model)
    size = sp.get_piece_size()
    config = dict(INTERNLM2_CONFIG)
    config["added_tokens_decoder"] = {
        str(size): {**SPECIAL, "content": "<|im_start|>"},
        str(size + 1): {**SPECIAL, "content": "<|im_end|>"},
    }
    tok = load_tokenizer(str(_write(tmp_path / "chat", {**files, "tokenizer_config.json": config})))
    ids = tok("<|im_start|>user\nHello<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == size and ids[-1] == size + 1
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == sp.encode("Hello world")


def test_a_config_naming_a_token_the_vocabulary_lacks_is_refused(layouts, tmp_path: Path) -> None:
    folder = tmp_path / "bad-bos"
    folder.mkdir()
    for f in layouts["llama-tokenizer-json"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    _write(
        folder,
        {
            "tokenizer_config.json": {**LLAMA_CONFIG, "bos_token": "<|begin_of_text|>"},
            "special_tokens_map.json": {},
        },
    )
    with pytest.raises(ValueError, match=r"bos=<\|begin_of_text\|>") as err:
        load_tokenizer(str(folder))
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


def test_a_tokenizer_without_eos_fails_in_the_encoder(layouts, tmp_path: Path) -> None:
    folder = tmp_path / "no-eos"
    folder.mkdir()
    for f in layouts["llama-tokenizer-json"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    _write(
        folder, {"tokenizer_config.json": {**LLAMA_CONFIG, "eos_token": None}, "special_tokens_map.json": {}}
    )
    tok = load_tokenizer(str(folder))
    with pytest.raises(ValueError, match="no EOS token") as err:
        ConversationEncoder(tok, 128)
    assert str(folder) in str(err.value)


class StandIn:
    """A tokenizer-shaped object with chosen special tokens (what a slow or remote tokenizer shows)."""

    name_or_path = "s3://models/odd"
    unk_token, unk_token_id = "<unk>", 0
    bos_token, bos_token_id = "<s>", 1
    eos_token, eos_token_id = "</s>", 2
    pad_token, pad_token_id = None, None

    def __len__(self) -> int:
        return 100


def test_special_ids_refuse_unknown_and_out_of_range_ids() -> None:
    from sphinxx.jobs.data.template import special_ids

    assert special_ids(StandIn()) == (1, 2, 2)
    unknown = StandIn()
    unknown.bos_token, unknown.bos_token_id = "<bos>", 0  # a name the vocabulary lacks maps to <unk>
    with pytest.raises(ValueError, match="s3://models/odd has no BOS token '<bos>'"):
        special_ids(unknown)
    outside = StandIn()
    outside.eos_token_id = 100
    with pytest.raises(ValueError, match="EOS id 100 outside its vocabulary of 100"):
        special_ids(outside)
    padded = StandIn()
    padded.pad_token, padded.pad_token_id = "<pad>", 3
    assert special_ids(padded) == (1, 2, 3)


@pytest.mark.parametrize(
    "files", [[], ["config.json", "model.safetensors", "tokenizer_config.json"]], ids=["empty", "weights"]
)
def test_a_folder_without_tokenizer_files_fails_in_one_line_naming_it(
    tmp_path: Path, files: list[str]
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in files:
        (folder / name).write_text("{}")
    with pytest.raises(ValueError) as err:
        load_tokenizer(str(folder))
    message = str(err.value)
    assert "\n" not in message and str(folder) in message and "no tokenizer files" in message
    from sphinxx.storage.errors import StorageAccessError

    with pytest.raises(StorageAccessError, match="data.tokenizer: .*missing does not exist"):
        load_tokenizer(str(tmp_path / "missing"))


MIXTRAL = [  # mistralai/Mixtral-8x7B-v0.1
    ".gitattributes",
    "README.md",
    "config.json",
    "generation_config.json",
    *(f"model-{i:05d}-of-00019.safetensors" for i in range(1, 20)),
    "model.safetensors.index.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
]
INTERNLM2 = [  # internlm/internlm2-7b
    ".gitattributes",
    "README.md",
    "config.json",
    "configuration_internlm2.py",
    "generation_config.json",
    "modeling_internlm2.py",
    *(f"pytorch_model-{i:05d}-of-00008.bin" for i in range(1, 9)),
    "pytorch_model.bin.index.json",
    "special_tokens_map.json",
    "tokenization_internlm2.py",
    "tokenization_internlm2_fast.py",
    "tokenizer.model",
    "tokenizer_config.json",
    "original/consolidated.00.pth",
    "original/tokenizer.model",
]


def test_tokenizer_files_keeps_only_what_a_load_reads() -> None:
    assert tokenizer_files(MIXTRAL) == [
        "config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    assert tokenizer_files(INTERNLM2) == [
        "config.json",
        "special_tokens_map.json",
        "tokenization_internlm2.py",
        "tokenization_internlm2_fast.py",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    assert tokenizer_files(["merges.txt", "vocab.json", "added_tokens.json", "model.bin"]) == [
        "added_tokens.json",
        "merges.txt",
        "vocab.json",
    ]


def test_loader_for_picks_the_rule() -> None:
    assert loader_for(MIXTRAL, "s3://m") == "tokenizer.json"
    assert loader_for(INTERNLM2, "s3://m") == "sentencepiece"
    assert loader_for(["vocab.json", "merges.txt"], "s3://m") == "auto"
    with pytest.raises(NoTokenizerFilesError, match="no tokenizer files under s3://m: expected one of"):
        loader_for(["config.json", "model.safetensors", "tokenizer_config.json"], "s3://m")


def test_first_difference() -> None:
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 5, 3], [1, 2, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


@pytest.mark.slow  # a moto server process
def test_internlm2_from_s3_fetches_only_tokenizer_files(
    sp_model: Path, sp, s3_bucket: str, tmp_path: Path, monkeypatch
) -> None:
    from sphinxx.storage.errors import StorageAccessError
    from sphinxx.storage.objectfs import open_fs

    cache = tmp_path / "cache"
    monkeypatch.setenv("SPHINXX_STAGE_DIR", str(cache))
    uri = f"s3://{s3_bucket}/models/internlm2-7b"
    fs = open_fs(uri)
    for name, value in internlm2_files(sp_model).items():
        fs.write_bytes(f"{uri}/{name}", value if isinstance(value, bytes) else json.dumps(value).encode())
    fs.write_bytes(f"{uri}/pytorch_model-00001-of-00008.bin", b"\0" * 1024)
    fs.write_bytes(f"{uri}/config.json", b"{}")
    tok = load_tokenizer(uri)
    assert tok(TEXTS[1], add_special_tokens=False)["input_ids"] == sp.encode(TEXTS[1])
    fetched = sorted(p.name for p in cache.rglob("*") if p.is_file() and ".staged" not in p.parts)
    assert fetched == sorted(tokenizer_files(internlm2_files(sp_model)) + ["config.json"])
    with pytest.raises(StorageAccessError, match=f"data.tokenizer: nothing at s3://{s3_bucket}/models/none"):
        load_tokenizer(f"s3://{s3_bucket}/models/none")
    fs.write_bytes(f"s3://{s3_bucket}/models/weights-only/model.safetensors", b"\0" * 16)
    with pytest.raises(ValueError, match=f"no tokenizer files under s3://{s3_bucket}/models/weights-only$"):
        load_tokenizer(f"s3://{s3_bucket}/models/weights-only")

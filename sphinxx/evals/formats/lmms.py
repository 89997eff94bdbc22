"""lmms-eval's datasets -> task records: `sphinxx eval import lmms-<task> SRC DEST`.

lmms-eval's tasks read Hugging Face datasets (lmms-lab/POPE, lmms-lab/VQAv2, ...). A team that has
downloaded their Parquet files converts them here; nothing is downloaded. SRC is one `.parquet`
file or a folder of them (read in name order). Each row's picture is an `Image` feature, stored as
the struct `{bytes, path}`: its bytes are written beside DEST (`request.image_out`), named by their
SHA-256 so that the many questions of one picture share one file. The columns read are the ones
lmms-eval's task code reads (docs/evaluation.md, "lmms-eval"); the records are the native
importer's for the same item (same id where the dataset keeps it, split, prompt, answers, metric),
so a converted task scores like a natively imported one. A row that cannot be converted is a
`Problem` (`<file>[<row>]`), never a crash.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from .. import prompts
from ..metrics import MME_COGNITION, MME_PERCEPTION
from ..task import TaskRecord
from .choice import CIRCULAR_OFFSET, present, shifted
from .common import (
    Files,
    FormatError,
    Imported,
    ImportRequest,
    basename,
    field_of,
    ident,
    image_extension,
    join,
    parent,
    text,
    texts,
)
from .refcoco import target
from .vqa import short_record
from .yesno import mme_record, pope_record, yes_no

# Hugging Face split names -> the native importer's split names (where the two differ).
VQAV2_SPLITS = {"validation": "val2014", "testdev": "test-dev2015", "test": "test2015"}
VAL_SPLITS = {"validation": "val"}  # TextVQA, DocVQA
CHARTQA_TYPES = {"human_test": "test_human", "augmented_test": "test_augmented"}
_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}$")  # validation-00000-of-00042.parquet
Build = Callable[[dict[str, Any], str, int], TaskRecord | list[TaskRecord] | None]


def parquet_files(files: Files, src: str) -> list[str]:
    """SRC itself (a .parquet file) or the .parquet files directly in the folder SRC."""
    if src.endswith(".parquet"):
        return [src]
    found = [join(src, n) for n in files.names(src) if n.endswith(".parquet")]
    if not found:
        raise FormatError(f"{src}: no .parquet file (SRC is a dataset's Parquet file or a folder of them)")
    return found


def read_rows(files: Files, uri: str) -> Iterator[dict[str, Any]]:
    """The rows of a Parquet file as dicts, one record batch at a time."""
    import pyarrow as pa  # lazy: only this command reads Parquet, and pyarrow is large to import
    import pyarrow.parquet as pq

    try:
        data = files.read(uri)
    except FileNotFoundError:
        raise FormatError(f"{uri}: no such file") from None
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as err:
        raise FormatError(f"{uri}: not a Parquet file ({err})") from None
    for batch in table.to_batches():
        yield from batch.to_pylist()


def split_of(uri: str) -> str:
    """The split a hub file holds: `<split>-00000-of-00001.parquet`, `<split>/0000.parquet`, else its stem."""
    name = basename(uri).removesuffix(".parquet")
    match = _SHARD.match(name)
    if match:
        return match["split"]
    return basename(parent(uri)) if name.isdigit() else name


def image_bytes(row: dict[str, Any], key: str = "image") -> bytes:
    """The bytes of an `Image` feature ({bytes, path}); ValueError when the row holds none."""
    value = field_of(row, key)
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, bytes) or not data:
        raise ValueError(f"field {key!r} holds no image bytes (an Image feature's {{bytes, path}})")
    image_extension(data, key)
    return data


def image_uri(request: ImportRequest, data: bytes) -> str:
    """Where an image is written: `<image_out>/<sha256 prefix>.<ext>` (one file per distinct picture)."""
    return join(request.image_out, f"{hashlib.sha256(data).hexdigest()[:24]}.{image_extension(data)}")


def unused_options(request: ImportRequest) -> list[str]:
    """Notes on the options an lmms-<task> format does not read (the pictures are in the rows)."""
    notes = []
    if request.images and request.fmt != "lmms-gqa":
        notes.append(f"--images {request.images} is not used: {request.fmt} reads the images in the rows")
    if request.annotations:
        notes.append(f"--annotations {request.annotations} is not used: {request.fmt} has no companion file")
    return notes


def _convert(files: Files, request: ImportRequest, out: Imported, build: Build) -> Imported:
    """`build(row, split, n)` for every row of every file of SRC (`n` counts rows over all files)."""
    out.notes += unused_options(request)
    n = 0
    for uri in parquet_files(files, request.src):
        split = split_of(uri)
        for k, row in enumerate(read_rows(files, uri)):
            out.add(f"{basename(uri)}[{k}]", build, row, split, n)
            n += 1
    return out


def _answers(row: dict[str, Any]) -> dict[str, Any]:
    """`answers` when the row has them (a test split publishes none: the record is unscored)."""
    return {"answers": texts(row, "answers")} if row.get("answers") is not None else {}


def lmms_vqav2(files: Files, request: ImportRequest) -> Imported:
    """lmms-lab/VQAv2: question_id, question, answers [{answer, ...}], question_type, answer_type, image."""
    out = Imported()

    def build(row: dict[str, Any], split: str, n: int) -> TaskRecord:
        qid, question, data = ident(row, "question_id"), text(row, "question"), image_bytes(row)
        rest = _answers(row)
        if rest:
            rest["meta"] = {
                k: str(row[k]) for k in ("question_type", "answer_type") if row.get(k) is not None
            }
        uri = image_uri(request, data)
        record = short_record(
            "vqav2", qid, VQAV2_SPLITS.get(split, split), uri, question, metric="vqa_accuracy", **rest
        )
        out.images[uri] = data
        return record

    return _convert(files, request, out, build)


def _listed_answers(
    task: str, id_key: str, split_key: str, metric: str
) -> Callable[[Files, ImportRequest], Imported]:
    """A converter for rows of `id_key`, question, answers [str], `split_key` (else the file's) and image."""

    def convert(files: Files, request: ImportRequest) -> Imported:
        out = Imported()

        def build(row: dict[str, Any], split: str, n: int) -> TaskRecord:
            qid, question, data = ident(row, id_key), text(row, "question"), image_bytes(row)
            split = str(row.get(split_key) or VAL_SPLITS.get(split, split))
            uri = image_uri(request, data)
            record = short_record(task, qid, split, uri, question, metric=metric, **_answers(row))
            out.images[uri] = data
            return record

        return _convert(files, request, out, build)

    return convert


# lmms-lab/textvqa: question_id, question, answers [str], set_name, image.
lmms_textvqa = _listed_answers("textvqa", "question_id", "set_name", "vqa_accuracy")
# lmms-lab/DocVQA (config DocVQA): questionId, question, answers [str], data_split, image.
lmms_docvqa = _listed_answers("docvqa", "questionId", "data_split", "anls")


def lmms_chartqa(files: Files, request: ImportRequest) -> Imported:
    """lmms-lab/ChartQA: type (human_test / augmented_test), question, answer, image.

    The id is `<split>-<k>`, k the row's place among the rows of its split (ChartQA has no id;
    the native importer numbers the rows of test_human.json and test_augmented.json the same way).
    """
    out = Imported()
    seen: Counter[str] = Counter()

    def build(row: dict[str, Any], split: str, n: int) -> TaskRecord:
        split = CHARTQA_TYPES.get(str(row.get("type")), split)
        k = seen[split]
        seen[split] += 1
        label = field_of(row, "answer")
        if isinstance(label, (int, float)) and not isinstance(label, bool):
            label = str(label)
        answers = [text({"answer": label}, "answer")]
        question, data = text(row, "question"), image_bytes(row)
        uri = image_uri(request, data)
        record = short_record(
            "chartqa", f"{split}-{k}", split, uri, question, metric="relaxed_accuracy", answers=answers
        )
        out.images[uri] = data
        return record

    return _convert(files, request, out, build)


def _config_folder(request: ImportRequest) -> str:
    """The folder of SRC's files: on the hub, a dataset config's name (`testdev_balanced_instructions`)."""
    return parent(request.src) if request.src.endswith(".parquet") else request.src.rstrip("/")


def gqa_images_uri(files: Files, request: ImportRequest) -> str:
    """--images, else the sibling config folder: `<x>_instructions/` -> `<x>_images/` (the hub's layout)."""
    if request.images:
        return request.images
    folder = _config_folder(request)
    if basename(folder).endswith("_instructions"):
        sibling = join(parent(folder), basename(folder).removesuffix("_instructions") + "_images")
        try:
            if any(n.endswith(".parquet") for n in files.names(sibling)):
                return sibling
        except (FileNotFoundError, NotADirectoryError):
            pass
    raise FormatError(f"{request.src}: GQA's images are a separate Parquet dataset; name it with --images")


def lmms_gqa(files: Files, request: ImportRequest) -> Imported:
    """lmms-lab/GQA: <x>_instructions (id, imageId, question, answer, types) and <x>_images (id, image)."""
    out = Imported()
    pictures: dict[str, bytes | None] = {}
    images_src = gqa_images_uri(files, request)
    for uri in parquet_files(files, images_src):
        for row in read_rows(files, uri):
            if isinstance(row.get("id"), (str, int)):
                value = row.get("image")
                pictures[str(row["id"])] = value.get("bytes") if isinstance(value, dict) else None
    folder = basename(_config_folder(request))
    config_split = folder.removesuffix("_instructions") if folder.endswith("_instructions") else ""

    def build(row: dict[str, Any], split: str, n: int) -> TaskRecord:
        qid, question, image_id = ident(row, "id"), text(row, "question"), ident(row, "imageId")
        if image_id not in pictures:
            raise ValueError(f"imageId {image_id!r} is not in the images Parquet ({images_src})")
        data = image_bytes({"image": pictures[image_id]})
        rest: dict[str, Any] = {"answers": [text(row, "answer")]} if row.get("answer") is not None else {}
        types = row.get("types")
        types = types if isinstance(types, dict) else {}
        rest["meta"] = {k: str(v) for k, v in types.items() if v is not None}
        uri = image_uri(request, data)
        record = short_record("gqa", qid, config_split or split, uri, question, metric="exact_match", **rest)
        out.images[uri] = data
        return record

    return _convert(files, request, out, build)


def lmms_pope(files: Files, request: ImportRequest) -> Imported:
    """lmms-lab/POPE: question_id, question, answer (yes/no), category (the subset), image."""
    out = Imported()

    def build(row: dict[str, Any], split: str, n: int) -> TaskRecord:
        qid, question, subset = ident(row, "question_id"), text(row, "question"), text(row, "category")
        answer, data = yes_no(text(row, "answer")), image_bytes(row)
        uri = image_uri(request, data)
        # The native importer's split: the subset's file name.
        record = pope_record(qid, f"coco_pope_{subset}", uri, question, answer, subset)
        out.images[uri] = data
        return record

    return _convert(files, request, out, build)


def lmms_mme(files: Files, request: ImportRequest) -> Imported:
    """lmms-lab/MME: question_id (`<category>/<image>`, shared by an image's two questions), question,
    answer (Yes/No), category, image. Grouped by image as the native importer does."""
    out = Imported()
    seen: Counter[str] = Counter()
    unknown: set[str] = set()

    def build(row: dict[str, Any], split: str, n: int) -> TaskRecord:
        qid, question, category = ident(row, "question_id"), text(row, "question"), text(row, "category")
        group = qid if "/" in qid else f"{category}/{qid}"
        answer, data = yes_no(text(row, "answer")), image_bytes(row)
        if category not in MME_PERCEPTION + MME_COGNITION and category not in unknown:
            unknown.add(category)
            out.notes.append(f"{category!r} is not an MME category; scored in neither sum")
        seen[group] += 1
        uri = image_uri(request, data)
        record = mme_record(group, seen[group], uri, question.strip(), answer, category)
        out.images[uri] = data
        return record

    return _convert(files, request, out, build)


def lmms_scienceqa(files: Files, request: ImportRequest) -> Imported:
    """lmms-lab/ScienceQA (config ScienceQA-IMG): question, choices, answer (index), hint, subject,
    grade, topic, category, skill, image. It has no id: a record's id is its row number. Rows
    without an image are not ScienceQA-IMG: counted as filtered, as the native importer does."""
    out = Imported()

    def build(row: dict[str, Any], split: str, n: int) -> TaskRecord | None:
        value = field_of(row, "image")
        if value is None or (isinstance(value, dict) and not value.get("bytes")):
            out.filtered += 1
            return None
        choices = field_of(row, "choices")
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise ValueError("field 'choices' must be a list of strings")
        answer = field_of(row, "answer")
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            raise ValueError(f"field 'answer' must index the choices, got {answer!r}")
        hint, question, data = present(row.get("hint")), text(row, "question"), image_bytes(row)
        uri = image_uri(request, data)
        record = TaskRecord(
            id=str(n),
            task="scienceqa_img",
            split=split,
            images=[uri],
            question=question,
            prompt=prompts.multiple_choice(question, choices, f"Context: {hint}" if hint else ""),
            answer_prefix=prompts.SCIENCEQA_ANSWER_PREFIX,
            metric="multiple_choice",
            answers=[chr(ord("A") + answer)],
            choices=choices,
            category=str(row.get("subject") or ""),
            meta={k: str(row[k]) for k in ("grade", "topic", "category", "skill") if row.get(k) is not None},
        )
        out.images[uri] = data
        return record

    return _convert(files, request, out, build)


def image_size(data: bytes) -> list[int]:
    """[width, height] of an image, from its header."""
    from PIL import Image, UnidentifiedImageError  # lazy: only RefCOCO needs an image's size

    try:
        with Image.open(io.BytesIO(data)) as image:
            return [int(image.width), int(image.height)]
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"field 'image' cannot be decoded ({err})") from None


def lmms_refcoco(files: Files, request: ImportRequest) -> Imported:
    """lmms-lab/RefCOCO, RefCOCOplus, RefCOCOg: question_id, answer (the referring expressions, a
    list), bbox (COCO [x, y, w, h] in pixels), image. One record per expression, `<question_id>-<k>`;
    the box in pixels [x1, y1, x2, y2] and the decoded image's size."""
    out = Imported()
    task = request.fmt.removeprefix("lmms-")

    def build(row: dict[str, Any], split: str, n: int) -> list[TaskRecord]:
        qid, data = ident(row, "question_id"), image_bytes(row)
        expressions = field_of(row, "answer")
        expressions = [expressions] if isinstance(expressions, str) else expressions
        if not isinstance(expressions, list) or not expressions:
            raise ValueError("field 'answer' must be a non-empty list of referring expressions")
        width, height = image_size(data)
        box, size = target(row, {"width": width, "height": height})
        uri = image_uri(request, data)
        records = [
            TaskRecord(
                id=f"{qid}-{k}",
                task=task,
                split=split,
                images=[uri],
                question=text({"answer": expression}, "answer"),
                prompt=prompts.referring(text({"answer": expression}, "answer")),
                metric="box_iou_0.5",
                box=box,
                image_size=size,
                group=qid,
            )
            for k, expression in enumerate(expressions)
        ]
        out.images[uri] = data
        return records

    return _convert(files, request, out, build)


def lmms_mmbench(files: Files, request: ImportRequest) -> Imported:
    """lmms-lab/MMBench (config en / cn): index, question, hint, A-E, answer, category, L2-category,
    image. Circular shifts as the native importer makes them (none added when indices of 1e6 and
    above show the rows already hold them)."""
    out = Imported(notes=unused_options(request))
    rows = [
        (uri, k, row)
        for uri in parquet_files(files, request.src)
        for k, row in enumerate(read_rows(files, uri))
    ]
    circular_given = any(
        str(r.get("index", "")).isdigit() and int(r["index"]) >= CIRCULAR_OFFSET for _, _, r in rows
    )

    def build(row: dict[str, Any], split: str) -> list[TaskRecord]:
        index = int(ident(row, "index"))
        options = [present(_cell(row.get(letter))) for letter in "ABCDEFGH"]
        options = options[: options.index("")] if "" in options else options
        if len(options) < 2:
            raise ValueError("fewer than two options in columns A, B, ...")
        answer = present(_cell(row.get("answer")))
        if answer and answer not in [chr(ord("A") + i) for i in range(len(options))]:
            raise ValueError(f"field 'answer' {answer!r} is not one of the options' letters")
        data = image_bytes(row)
        uri = image_uri(request, data)
        question, hint = text(row, "question"), present(_cell(row.get("hint")))
        source = {"category": _cell(row.get("category")), "l2-category": _cell(row.get("L2-category"))}
        shifts = [0] if circular_given else list(range(len(options)))
        records = [shifted(source, index, k, options, answer, question, hint, uri, split) for k in shifts]
        out.images[uri] = data
        return records

    for uri, k, row in rows:
        out.add(f"{basename(uri)}[{k}]", build, row, split_of(uri))
    return out


def _cell(value: Any) -> str | None:
    """A text cell of a Parquet row as a string (numbers as text; None stays None)."""
    return None if value is None else str(value)


LMMS_FORMATS = {
    "lmms-vqav2": lmms_vqav2,
    "lmms-gqa": lmms_gqa,
    "lmms-textvqa": lmms_textvqa,
    "lmms-docvqa": lmms_docvqa,
    "lmms-chartqa": lmms_chartqa,
    "lmms-refcoco": lmms_refcoco,
    "lmms-refcoco+": lmms_refcoco,
    "lmms-refcocog": lmms_refcoco,
    "lmms-pope": lmms_pope,
    "lmms-mme": lmms_mme,
    "lmms-mmbench": lmms_mmbench,
    "lmms-scienceqa": lmms_scienceqa,
}

"""Short-answer benchmarks: VQAv2, GQA, TextVQA, DocVQA, ChartQA (docs/evaluation.md has the layouts)."""

from __future__ import annotations

from typing import Any

from .. import prompts
from ..task import TaskRecord
from .common import (
    Files,
    FormatError,
    Imported,
    ImportRequest,
    basename,
    field_of,
    ident,
    join,
    parent,
    read_json,
    stem,
    text,
    texts,
)


def short_record(task: str, rid: str, split: str, image: str, question: str, **rest: Any) -> TaskRecord:
    return TaskRecord(
        id=rid,
        task=task,
        split=split,
        images=[image],
        question=question,
        prompt=prompts.short_answer(question),
        **rest,
    )


def vqav2_image(images: str, subtype: str, image_id: int) -> str:
    """The COCO image of a VQAv2 question: <images>/<folder>/COCO_<folder>_<12-digit id>.jpg."""
    folder = "test2015" if subtype.startswith("test") else subtype  # test-dev2015 images are test2015's
    return join(images, folder, f"COCO_{folder}_{image_id:012d}.jpg")


def textvqa_image(images: str, split: str, image_id: str) -> str:
    """A TextVQA image: test images in test_images/, train and val images in train_images/."""
    return join(images, "test_images" if split == "test" else "train_images", f"{image_id}.jpg")


def annotations_uri(questions: str) -> str:
    """v2_OpenEnded_mscoco_val2014_questions.json -> v2_mscoco_val2014_annotations.json, beside it."""
    name = basename(questions).replace("OpenEnded_", "").replace("_questions", "_annotations")
    return join(parent(questions), name)


def vqav2(files: Files, request: ImportRequest) -> Imported:
    """VQAv2: the questions JSON (SRC) and the annotations JSON beside it (ten answers each)."""
    out = Imported()
    questions = read_json(files, request.src)
    if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
        raise FormatError(f"{request.src}: a VQAv2 questions file has a 'questions' list")
    subtype = str(questions.get("data_subtype", "val2014"))
    images = request.images or parent(request.src)
    answers_uri = request.annotations or annotations_uri(request.src)
    answers: dict[str, Any] | None = None
    if files.exists(answers_uri):
        annotations = read_json(files, answers_uri)
        if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
            raise FormatError(f"{answers_uri}: a VQAv2 annotations file has an 'annotations' list")
        answers = {str(a.get("question_id")): a for a in annotations["annotations"] if isinstance(a, dict)}
    else:
        out.notes.append(f"no annotations at {answers_uri}: records carry no answers (unscored)")

    def build(item: Any) -> TaskRecord:
        qid, question = ident(item, "question_id"), text(item, "question")
        image_id = int(field_of(item, "image_id"))
        rest: dict[str, Any] = {}
        if answers is not None:
            if qid not in answers:
                raise ValueError("no annotation for this question_id")
            found = answers[qid]
            rest["answers"] = texts(found, "answers")
            rest["meta"] = {k: str(found[k]) for k in ("question_type", "answer_type") if k in found}
        image = vqav2_image(images, subtype, image_id)
        return short_record("vqav2", qid, subtype, image, question, metric="vqa_accuracy", **rest)

    for n, item in enumerate(questions["questions"]):
        out.add(f"{basename(request.src)}[{n}]", build, item)
    return out


def gqa(files: Files, request: ImportRequest) -> Imported:
    """GQA: a questions JSON (SRC), {question id: {imageId, question, answer, ...}}."""
    out = Imported()
    data = read_json(files, request.src)
    if not isinstance(data, dict):
        raise FormatError(f"{request.src}: a GQA questions file maps question ids to questions")
    split = stem(request.src).removesuffix("_questions")
    images = request.images or join(parent(request.src), "images")

    def build(qid: str, item: Any) -> TaskRecord:
        question, image = text(item, "question"), join(images, f"{ident(item, 'imageId')}.jpg")
        rest: dict[str, Any] = {"answers": [text(item, "answer")]} if "answer" in item else {}
        types = item["types"] if isinstance(item.get("types"), dict) else {}
        rest["meta"] = {k: str(v) for k, v in types.items()}
        return short_record("gqa", qid, split, image, question, metric="exact_match", **rest)

    for qid, item in data.items():
        out.add(f"{basename(request.src)}[{qid}]", build, qid, item)
    return out


def _data_list(files: Files, uri: str, name: str) -> tuple[dict[str, Any], list[Any]]:
    data = read_json(files, uri)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise FormatError(f"{uri}: a {name} file is an object with a 'data' list")
    return data, data["data"]


def textvqa(files: Files, request: ImportRequest) -> Imported:
    """TextVQA: TextVQA_0.5.1_<split>.json (SRC), a `data` list; images in train_images/, test_images/."""
    out = Imported()
    _, items = _data_list(files, request.src, "TextVQA")
    images = request.images or parent(request.src)

    def build(item: Any) -> TaskRecord:
        split = text(item, "set_name")
        rest: dict[str, Any] = {"answers": texts(item, "answers")} if "answers" in item else {}
        image = textvqa_image(images, split, ident(item, "image_id"))
        qid = ident(item, "question_id")
        return short_record(
            "textvqa", qid, split, image, text(item, "question"), metric="vqa_accuracy", **rest
        )

    for n, item in enumerate(items):
        out.add(f"{basename(request.src)}[{n}]", build, item)
    return out


def docvqa(files: Files, request: ImportRequest) -> Imported:
    """DocVQA: <split>_v1.0.json (SRC) with a `data` list; `image` is relative to the file's folder."""
    out = Imported()
    top, items = _data_list(files, request.src, "DocVQA")
    images = request.images or parent(request.src)

    def build(item: Any) -> TaskRecord:
        split = str(item.get("data_split") or top.get("dataset_split") or stem(request.src))
        rest: dict[str, Any] = {"answers": texts(item, "answers")} if "answers" in item else {}
        image = join(images, text(item, "image"))
        qid = ident(item, "questionId")
        return short_record("docvqa", qid, split, image, text(item, "question"), metric="anls", **rest)

    for n, item in enumerate(items):
        out.add(f"{basename(request.src)}[{n}]", build, item)
    return out


def chartqa(files: Files, request: ImportRequest) -> Imported:
    """ChartQA: test_human.json or test_augmented.json (SRC), [{imgname, query, label}]; images in png/."""
    out = Imported()
    items = read_json(files, request.src)
    if not isinstance(items, list):
        raise FormatError(f"{request.src}: a ChartQA file is a list of {{imgname, query, label}}")
    split = stem(request.src)
    images = request.images or join(parent(request.src), "png")

    def build(n: int, item: Any) -> TaskRecord:
        label = field_of(item, "label")
        if isinstance(label, (int, float)) and not isinstance(label, bool):
            label = str(label)
        answers = [text({"label": label}, "label")]
        image = join(images, text(item, "imgname"))
        return short_record(
            "chartqa",
            f"{split}-{n}",
            split,
            image,
            text(item, "query"),
            metric="relaxed_accuracy",
            answers=answers,
        )

    for n, item in enumerate(items):
        out.add(f"{basename(request.src)}[{n}]", build, n, item)
    return out

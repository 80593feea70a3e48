"""``hf-vtok describe``: image → caption, or the answer to ``--question``, from an MLLM (greedy decoding, so the
same image always gets the same text). Prints one line per image and writes ``describe.json``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import positive_int

EXAMPLES = """\
Examples:
  hf-vtok describe scene.png                                   # a caption from the shipped MLLM
  hf-vtok describe scene.png --question "what colour is the circle?"
  hf-vtok describe a.png b.png --mllm runs/my_mllm --out answers.json

Questions and captions are phrased the way the model was trained (its processor's `qa` / `captioning` task prompts).
"""


def describe_image(loaded, image, prompt: str, max_new_tokens: int) -> str:
    """The model's greedy continuation of ``prompt`` (which holds the image marker) about ``image``."""
    import torch

    model, processor = loaded.model, loaded.processor
    extra = {}
    if not model.config.is_discrete:  # continuous tokenizers: as many placeholders as the image has tokens
        pixel_values = processor.image_processor([image], return_tensors="pt")["pixel_values"]
        extra["num_image_tokens"] = model.count_image_tokens(pixel_values.to(model.device))
    batch = processor(images=[image], text=[prompt], use_chat_template=True, **extra).to(model.device)
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return tokenizer.decode(generated[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def run(args: argparse.Namespace) -> int:
    from .checkpoints import load_images, load_mllm, map_with_estimate

    if args.question is not None and not args.question.strip():
        raise ValueError("`--question` must be non-empty text, got an empty question.")
    if Path(args.out).suffix != ".json":
        raise ValueError(f"`--out` must be a .json file, got {args.out!r}.")
    images = load_images(args.images)
    loaded = load_mllm(args.mllm)
    processor = loaded.processor
    if args.question is None:
        task, prompt = "captioning", processor.task_prompt("captioning")
    else:
        task, prompt = "qa", processor.task_prompt("qa", question=args.question)
    texts = map_with_estimate(
        lambda image: describe_image(loaded, image, prompt, args.max_new_tokens), images, f"{task} with {args.mllm}"
    )
    for source, text in zip(args.images, texts):
        print(f"{source}: {text}")
    summary = {
        "mllm": args.mllm,
        "task": task,
        "question": args.question,
        "prompt": prompt,
        "results": [{"source": source, "text": text} for source, text in zip(args.images, texts)],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0


def register(commands) -> None:
    """Add the subcommand to the ``hf-vtok`` parser's subparsers."""
    from .checkpoints import add_command, add_images_argument

    parser = add_command(
        commands,
        "describe",
        help="image → caption, or the answer to a question, with an MLLM",
        description="Caption each image, or answer --question about it, with an MLLM reading the image through its "
        "visual tokenizer (greedy decoding). Prints one line per image and writes a JSON file.",
        examples=EXAMPLES,
    )
    add_images_argument(parser)
    parser.add_argument("--mllm", default="shipped:mllm", help="shipped:mllm or an MLLM folder (default: shipped:mllm)")
    parser.add_argument("--question", default=None, help="a question about each image (default: caption it)")
    parser.add_argument("--out", default="describe.json", help="output JSON file (default: describe.json)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=48, help="longest text to write (default: 48)")
    parser.set_defaults(handler=run)

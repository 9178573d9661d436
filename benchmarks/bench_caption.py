"""Captions/s of the shipped captioner on this machine: greedy and beam-3 decoding against the bare decoder
forward (one teacher-forced pass over prefix + prompt + a caption-length sequence, no search) in the same run, and
end to end from image files (decode + encode + greedy).

    python benchmarks/bench_caption.py                  # 256 AID test images, batch 32
    python benchmarks/bench_caption.py --n 64 --model runs/terravl-captioner/model

Images are the rsicd_aid test split in ../shared/data (required).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="terravl-captioner")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import terravl.models as m
    from terravl import config
    from terravl.datasets import KarpathyCaptions
    from terravl.models.bridge import CAPTION_PROMPT
    from terravl.tasks import caption

    shared = config.shared_dir()
    if shared is None:
        raise SystemExit("needs ../shared/data (set TERRAVL_SHARED)")
    records = KarpathyCaptions(shared / "data" / "rsicd_aid" / "dataset_rsicd_aid.json", split="test").records
    paths = [r.path for r in records[: args.n]]
    captioner = m.load_captioner(args.model)
    features = captioner.encoder.encode_images(paths, batch_size=64)
    captioner.generate(features[:4], CAPTION_PROMPT, beams=1)  # warm-up

    greedy = captioner.generate(features, CAPTION_PROMPT, beams=1, batch_size=args.batch_size)
    length = max(1, round(sum(len(captioner.target_ids(c)) for c in greedy) / len(greedy)))
    prompt = captioner.prompt_ids(CAPTION_PROMPT)
    rows = []

    def timed(name, fn):
        start = time.perf_counter()
        fn()
        rate = len(paths) / (time.perf_counter() - start)
        rows.append((name, rate))

    def bare():
        with torch.inference_mode():
            for i in range(0, len(paths), args.batch_size):
                batch = torch.as_tensor(features[i:i + args.batch_size])
                ids = torch.tensor([prompt + [captioner.tokenizer.eos_token_id] * length] * len(batch))
                inputs = torch.cat([captioner.mapper(batch), captioner.lm.get_input_embeddings()(ids)], 1)
                captioner.lm(inputs_embeds=inputs)

    timed("bare decoder forward (1 pass)", bare)
    timed("greedy", lambda: captioner.generate(features, CAPTION_PROMPT, beams=1, batch_size=args.batch_size))
    timed("beam 3", lambda: captioner.generate(features, CAPTION_PROMPT, beams=3, batch_size=args.batch_size))
    timed("end to end: files → greedy captions", lambda: caption(paths, captioner, beams=1,
                                                                 batch_size=args.batch_size))
    base = rows[0][1]
    print(f"\n{captioner.name}: {len(paths)} images, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"mean greedy caption {length} tokens")
    print(f"| {'method':38} | {'captions/s':>10} | {'vs bare forward':>15} |")
    print(f"|{'-' * 40}|{'-' * 12}|{'-' * 17}|")
    for name, rate in rows:
        print(f"| {name:38} | {rate:10.1f} | {rate / base:14.3f}× |")


if __name__ == "__main__":
    main()

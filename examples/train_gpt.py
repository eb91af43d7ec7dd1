"""Train the small byte-level GPT of ``python -m fasttx train`` (same code, same flags):

    python examples/train_gpt.py --steps 500 --compare
    torchrun --nproc-per-node 2 examples/train_gpt.py --steps 500
"""

from fasttx.cli import train

if __name__ == "__main__":
    train.run(train.parse_args())

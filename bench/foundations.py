"""The Foundations figures: the perceptron rule and gradient descent on AND/OR/XOR, the 2-2-1 MLP on XOR per seed
and activation, and the universal-approximation error against hidden units.

    python bench/foundations.py [--seeds 10]

Everything is deterministic (fixed seeds, full-batch training): the tables reproduce exactly.
"""
import argparse
import time

import torch

from core.models import perceptron as P


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10, help="MLP initialisations tried per activation")
    args = parser.parse_args()
    torch.set_num_threads(1)

    print("| gate | perceptron rule: first epoch without a mistake | gradient descent (300 epochs): mistakes left |")
    print("|---|---|---|")
    for gate, targets in P.GATES.items():
        rule = P.perceptron_rule(targets)
        cycle = P.repeats_a_state(rule)
        converged = rule.converged_at or f"never (weights after epoch {cycle[1]} = after epoch {cycle[0]}: a cycle)"
        print(f"| {gate} | {converged} | {P.gradient_descent(targets).errors[-1]} |")

    print(f"\n| XOR, 2-2-1 MLP, Adam lr 0.1, {P.MAX_EPOCHS} epochs | seeds solved (4/4 right) | first epoch 4/4 (median) |")
    print("|---|---|---|")
    for name in P.ACTIVATIONS:
        solved, epochs = [], []
        for seed in range(args.seeds):
            mistakes = P.train_xor_mlp(P.GATES["XOR"], name, seed=seed)[2]
            if mistakes[-1] == 0:
                solved.append(seed)
                epochs.append(next(k + 1 for k, m in enumerate(mistakes) if m == 0))
        median = sorted(epochs)[len(epochs) // 2] if epochs else "-"
        print(f"| {name} | {len(solved)}/{args.seeds}: {solved} | {median} |")

    print("\n| target on [-π, π], tanh, Adam 1500 steps | " + " | ".join(f"n = {n}" for n in P.HIDDEN_UNITS) + " |")
    print("|---" * (len(P.HIDDEN_UNITS) + 1) + "|")
    for target in P.TARGETS:
        start = time.perf_counter()
        errors = [P.approximate(target, n)[3] for n in P.HIDDEN_UNITS]
        seconds = (time.perf_counter() - start) / len(errors)
        print(f"| {target} (MSE; {seconds:.2f} s per fit) | " + " | ".join(f"{e:.2e}" for e in errors) + " |")


if __name__ == "__main__":
    main()

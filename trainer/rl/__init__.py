"""Reinforcement learning of the reasoner: GRPO with two-stage rollouts and a set-wise reward
(`train_rl.train_rl`), per-domain experts, and their fusion into one model by rejection-sampling
fine-tuning or multi-teacher on-policy distillation (`unify`).

Modules: `prompts` (RL prompts from a split), `rewards` (set-wise reward), `rollout`
(G thoughts × M lists), `scoring` (token log-probs of rollouts), `grpo` (advantages, clipped
surrogate, KL), `train_rl` (the loop), `unify` (RFT, MOPD), `cli` (`reasonrec train
reasoner-rl | reasoner-unify`).
"""

"""Training: the one training job over TRL's trainers, preference data, reward models and RL
rewards. Imports plumbing, engines and judging."""

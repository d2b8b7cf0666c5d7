"""The rollout state machine: phases, transitions and analysis decisions, all pure."""

"""A user's own reward, plugged in from config (``+reward.fn._target_=tests.user_rewards.length_reward``)
by tests that need every list to spread, whatever the tiny model answers."""


def length_reward(completion: str, record) -> float:
    return (len(completion) % 7) / 6

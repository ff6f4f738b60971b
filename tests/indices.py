"""The simulator's indices as the hand-worked tests write them: functions (encrypt, decrypt,
firewall) = (0, 1, 2), configs (small, medium, large) = (0, 1, 2), and an instance id is
``cluster * 3 + config``."""

ENC, DEC, FW = 0, 1, 2
SMALL, MEDIUM, LARGE = 0, 1, 2


def inst(k: int, c: int) -> int:
    """The id of config ``c``'s instance on cluster ``k``."""
    return k * 3 + c

import pytest

from feedback.steps import split_steps


@pytest.mark.parametrize(
    ("text", "steps"),
    [
        ("1. Boil water.\n2. Add the egg.\n3. Wait.", ["1. Boil water.", "2. Add the egg.", "3. Wait."]),
        ("Sure:\n1. a\n2) b\n   more of b\n", ["Sure:", "1. a", "2) b\n   more of b"]),
        ("Para one.\n\nPara two.\n\n\n", ["Para one.", "Para two."]),
        ("Intro.\n\nHere:\n1. a\n\n2. b", ["Intro.", "Here:", "1. a", "2. b"]),
        ("", []),
        ("In 2024. things changed", ["In 2024. things changed"]),
    ],
)
def test_it_cuts_answers_into_steps(text, steps):
    assert split_steps(text) == steps


def test_all_steps_but_the_last_are_final_while_the_answer_streams():
    answer = "Here is how.\n\n1. Boil water.\n2. Add the egg,\ncarefully.\n3. Wait nine minutes.\n\nEnjoy."
    reported: list[str] = []
    for end in range(len(answer) + 1):
        done = split_steps(answer[:end])[:-1]
        assert done[: len(reported)] == reported, answer[:end]
        reported = done
    assert split_steps(answer)[: len(reported)] == reported
    assert reported == ["Here is how.", "1. Boil water.", "2. Add the egg,\ncarefully."]

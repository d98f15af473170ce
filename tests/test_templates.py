import pytest

from reward.templates import PAIRWISE, POINTWISE, JudgeTemplate


def test_builtin_templates_render():
    system, user = POINTWISE.render(question="Q?", response="R.", min_score="1", max_score="100")
    assert "from 1 (poor) to 100 (excellent)" in system
    assert "[User Question]\nQ?" in user and "\nR.\n" in user
    _, user = PAIRWISE.render(question="Q?", response_a="first", response_b="second")
    assert user.index("first") < user.index("second")


def test_render_is_single_pass():
    _, user = POINTWISE.render(question="Q?", response="see {question} and {max_score}", min_score="1", max_score="5")
    assert "see {question} and {max_score}" in user


def test_template_checks():
    with pytest.raises(ValueError, match="unknown placeholders"):
        JudgeTemplate("sys {rubric}", "{question} {response}", "Score: [", required=("question", "response"))
    with pytest.raises(ValueError, match="lacks required"):
        JudgeTemplate("sys", "{question}", "Score: [", required=("question", "response"))
    with pytest.raises(ValueError, match="slot"):
        JudgeTemplate("sys", "{question} {response}", "", required=("question", "response"))
    with pytest.raises(ValueError, match="missing template fields"):
        POINTWISE.render(question="Q")

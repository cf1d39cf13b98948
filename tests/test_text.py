"""Message wording: numbers with nouns and verbs that agree."""

from napari_sbd.core.text import counted, verb


def test_counted_and_verb_agree_with_the_number():
    assert counted(1, "frame") == "1 frame"
    assert counted(0, "frame") == "0 frames"
    assert counted(3, "frame") == "3 frames"
    assert counted(2, "vacancy", "vacancies") == "2 vacancies"
    assert verb(1, "has", "have") == "has" and verb(2, "has", "have") == "have"

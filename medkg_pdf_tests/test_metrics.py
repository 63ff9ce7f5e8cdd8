"""The comparison metrics on hand-made pairs whose scores are known."""

import pytest

from medkg_pdf import metrics


def test_identical_texts_score_one_despite_markup():
    assert metrics.edit_similarity("# Dosage\n\n**500 mg**", "Dosage 500 mg") == 1.0
    assert metrics.word_f1("- take 2 tablets", "take 2 tablets") == 1.0


def test_word_f1_known_value():
    # candidate: a b c d ; reference: a b c e  -> overlap 3, P = R = 3/4, F1 = 0.75
    assert metrics.word_f1("a b c d", "a b c e") == pytest.approx(0.75)


def test_word_f1_ignores_reading_order():
    assert metrics.word_f1("right column left column", "left column right column") == 1.0
    assert metrics.edit_similarity("right column left column", "left column right column") < 1.0


def test_edit_similarity_known_value():
    # "kitten" vs "sitting": Levenshtein distance 3 over max length 7
    assert metrics.edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)


def test_numeric_recall_names_the_missed_dose():
    recall, missing = metrics.numeric_recall("give 50 mg every 12 hours", "give 500 mg every 12 hours (2.3%)")
    assert recall == pytest.approx(1 / 3)
    assert missing == ["2.3%", "500"]


def test_numeric_tokens_keep_percent_and_decimals():
    assert metrics.numeric_tokens("25 mg/kg, 2.5 %, 1,000 units") == ["25", "2.5%", "1000"]


def test_numeric_recall_without_numbers_is_perfect():
    assert metrics.numeric_recall("anything", "no numbers here") == (1.0, [])


def test_table_cell_agreement():
    reference = [["Infection", "Adults"], ["Ear", "500 mg"]]
    assert metrics.table_cell_agreement(reference, reference) == 1.0
    assert metrics.table_cell_agreement([["Infection", "Adults"], ["Ear", "250 mg"]], reference) == 0.75
    assert metrics.table_cell_agreement([], reference) == 0.0

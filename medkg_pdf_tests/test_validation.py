"""Every kind of bad file gets a reason a person understands, before it costs memory or GPU time."""

import pytest

from medkg_pdf.validation import InvalidPdfError, check_size, validate_pdf
from medkg_pdf_tests.support import pdf_factory


@pytest.mark.parametrize(
    ("make", "reason", "words"),
    [
        (pdf_factory.zero_byte, "empty_file", "empty"),
        (pdf_factory.html_renamed, "not_pdf", "HTML"),
        (pdf_factory.png_renamed, "not_pdf", "PNG"),
        (pdf_factory.truncated_pdf, "truncated", "cut off"),
        (pdf_factory.encrypted_pdf, "encrypted", "password"),
        (pdf_factory.zero_page_pdf, None, None),
    ],
)
def test_bad_files_are_refused_with_a_reason(make, reason, words):
    with pytest.raises(InvalidPdfError) as caught:
        validate_pdf(make(), max_pages=100)
    if reason:
        assert caught.value.reason == reason
        assert words in str(caught.value)
    else:
        assert caught.value.reason in {"corrupt", "no_pages"}


def test_page_cap_is_configurable():
    with pytest.raises(InvalidPdfError, match="over the cap of 100") as caught:
        validate_pdf(pdf_factory.many_pages_pdf(150), max_pages=100)
    assert caught.value.reason == "too_many_pages"


def test_size_is_checked_before_reading():
    with pytest.raises(InvalidPdfError, match="over the 100 MiB limit"):
        check_size(101 * 1024 * 1024)


def test_broken_xref_is_repaired_with_a_warning():
    valid = validate_pdf(pdf_factory.broken_xref_pdf(), max_pages=10)
    assert valid.page_count >= 1
    assert valid.repaired and "repaired" in valid.warnings[0]


def test_valid_pdf_facts():
    valid = validate_pdf(pdf_factory.text_pdf(["Amoxicillin 500 mg"], pages=2), max_pages=10)
    assert valid.page_count == 2
    assert valid.pages_with_text == [True, True]
    assert len(valid.sha256) == 64

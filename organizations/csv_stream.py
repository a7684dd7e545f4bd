"""CSV downloads that stream: each row is written as the client reads it, so an export of a million
rows holds one chunk of the query in memory, never the file."""

import csv

from django.http import StreamingHttpResponse

# A cell starting with one of these is run as a formula by spreadsheets; names, hostnames and
# machine ids come from people and engines, so such cells are prefixed with a quote.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class Echo:
    """csv.writer writes into this and gets the line back."""

    def write(self, value):
        return value


def safe_cell(value):
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def streaming_csv_response(*, header, rows, filename):
    """A download of `rows` (an iterable of lists, consumed lazily) under `header`."""
    writer = csv.writer(Echo())

    def lines():
        yield writer.writerow(header)
        for row in rows:
            yield writer.writerow([safe_cell(value) for value in row])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response

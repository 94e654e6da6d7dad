"""A spreadsheet cell as the text a person sees in Excel: numbers, dates, times, booleans.

An .xlsx cell stores a number and a number format; the message a user wrote is what Excel shows,
so `42` in a `0.00` cell is "42.00", `0.256` in a `0%` cell is "26%", a date serial in a
`dd/mm/yyyy` cell is "05/01/2024". The common formats are rendered here (fixed decimals,
thousands separators, percent, scientific, literal text and currency around the digits, dates and
times); anything else (fractions, conditions such as `[<=9999999]`) falls back to Excel's
General format. Names of months and days are English, and the decimal point is `.`, whatever the
locale of the machine that wrote the file.

`newlines` also lives here: every reader turns `\\r\\n` and a lone `\\r` inside a cell into `\\n`.
"""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September")
MONTHS += ("October", "November", "December")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
EXCEL_EPOCH = datetime(1899, 12, 30)  # serial 0 in the 1900 date system, for times and spans
LONG_DATE = "dddd, mmmm d, yyyy"  # what Excel's system formats [$-F800] and [$-F400] show
LONG_TIME = "h:mm:ss AM/PM"


def newlines(text: str) -> str:
    """`\\r\\n` and lone `\\r` as `\\n`: one line break inside a message, whatever wrote it."""
    if "\r" in text:
        return text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def cell_text(value: object, number_format: str = "General") -> str:
    """The text Excel shows for `value` in a cell with `number_format`."""
    if value is None:
        return ""
    if type(value) is str:
        return newlines(value)
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return format_number(value, number_format or "General")
    if isinstance(value, datetime | date | time | timedelta):
        return format_datetime(value, number_format or "General")
    return newlines(str(value))


# -- General --------------------------------------------------------------------------------------


def general(value: int | float) -> str:
    """Excel's General format: up to 11 significant digits, scientific beyond (1.23457E+11)."""
    if isinstance(value, int) and abs(value) < 10**11:
        return str(value)
    number = float(value)
    if number == 0:
        return "0"
    if math.isnan(number) or math.isinf(number):
        return "#NUM!"
    size = abs(number)
    if 1e-9 <= size < 1e11:
        decimals = max(0, 10 - math.floor(math.log10(size)))
        text = f"{number:.{decimals}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    mantissa, exponent = f"{number:.5E}".split("E")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}E{exponent[0]}{exponent[1:].lstrip('0').zfill(2)}"


# -- Number formats -------------------------------------------------------------------------------

# A parsed section is a list of tokens: ("lit", text), ("digit", "0"|"#"|"?"), ("point", "."),
# ("general", ""), ("exp", "+"|"-"), ("percent", "%"), ("comma", ","), ("text", "@"),
# ("date", code), and ("unsupported", why).


def _split_sections(code: str) -> list[str]:
    """The `;`-separated sections of a format code (a `;` in quotes or brackets is text)."""
    sections, current, i = [], [], 0
    while i < len(code):
        ch = code[i]
        if ch == '"':
            end = code.find('"', i + 1)
            end = len(code) if end < 0 else end
            current.append(code[i : end + 1])
            i = end + 1
            continue
        if ch == "\\" and i + 1 < len(code):
            current.append(code[i : i + 2])
            i += 2
            continue
        if ch == "[":
            end = code.find("]", i)
            end = len(code) - 1 if end < 0 else end
            current.append(code[i : end + 1])
            i = end + 1
            continue
        if ch == ";":
            sections.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    sections.append("".join(current))
    return sections


DATE_LETTERS = set("yYmMdDhHsS")


@lru_cache(maxsize=256)
def _tokens(section: str) -> tuple[tuple[str, str], ...]:
    """Tokens of one section (see above); literal text, quotes, escapes and brackets resolved."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(section)
    while i < n:
        ch = section[i]
        rest = section[i:]
        if ch == '"':
            end = section.find('"', i + 1)
            end = n if end < 0 else end
            out.append(("lit", section[i + 1 : end]))
            i = end + 1
        elif ch == "\\":
            out.append(("lit", section[i + 1 : i + 2]))
            i += 2
        elif ch == "_":
            out.append(("lit", " "))
            i += 2
        elif ch == "*":
            i += 2  # fill with the next character: nothing to show in a text
        elif ch == "[":
            end = section.find("]", i)
            end = n - 1 if end < 0 else end
            inner = section[i + 1 : end]
            i = end + 1
            upper = inner.upper()
            if upper.startswith("$"):
                symbol = inner[1:].split("-", 1)[0]
                if upper in ("$-F800", "$-X-SYSDATE"):
                    out.append(("date", LONG_DATE))
                elif upper in ("$-F400", "$-X-SYSTIME"):
                    out.append(("date", LONG_TIME))
                elif symbol:
                    out.append(("lit", symbol))
            elif upper and upper[0] in "HMS" and set(upper) <= set("HMS"):
                out.append(("date", f"[{upper.lower()}]"))
            elif upper[:1] in ("<", ">", "="):
                out.append(("unsupported", "condition"))
            # anything else in brackets is a colour: not text
        elif rest[:7].upper() == "GENERAL":
            out.append(("general", ""))
            i += 7
        elif rest[:5].upper() == "AM/PM":
            out.append(("date", "AM/PM"))
            i += 5
        elif rest[:3].upper() == "A/P":
            out.append(("date", rest[:3]))
            i += 3
        elif ch in DATE_LETTERS:
            j = i
            while j < n and section[j].lower() == ch.lower():
                j += 1
            out.append(("date", section[i:j].lower()))
            i = j
        elif ch in "0#?":
            out.append(("digit", ch))
            i += 1
        elif ch == "." and out and out[-1][0] == "date":
            j = i + 1
            while j < n and section[j] == "0":
                j += 1
            out.append(("date", "." + "0" * (j - i - 1)) if j > i + 1 else ("lit", "."))
            i = j
        elif ch == ".":
            out.append(("point", "."))
            i += 1
        elif ch in "eE" and section[i + 1 : i + 2] in ("+", "-"):
            out.append(("exp", section[i + 1]))
            i += 2
        elif ch == "%":
            out.append(("percent", "%"))
            i += 1
        elif ch == ",":
            out.append(("comma", ","))
            i += 1
        elif ch == "@":
            out.append(("text", "@"))
            i += 1
        elif ch == "/" and any(t[0] == "digit" for t in out):
            out.append(("unsupported", "fraction"))
            i += 1
        else:
            out.append(("lit", ch))
            i += 1
    return tuple(out)


def format_number(value: int | float, code: str) -> str:
    """`value` shown with the number format `code` (General when the format is not supported)."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return "#NUM!"
    sections = _split_sections(code)
    if value < 0 and len(sections) >= 2 and sections[1]:
        section, number, sign = sections[1], -value, ""
    elif value == 0 and len(sections) >= 3 and sections[2]:
        section, number, sign = sections[2], value, ""
    else:
        section, number, sign = sections[0], abs(value), "-" if value < 0 else ""
    tokens = _tokens(section)
    kinds = {kind for kind, _ in tokens}
    if "unsupported" in kinds or "date" in kinds or not tokens:
        return general(value)
    if "digit" not in kinds:
        if "text" in kinds:  # a text format ('@') shows a number as General does
            tokens = tuple(("general", "") if k == "text" else (k, t) for k, t in tokens)
            kinds.add("general")
        if "general" in kinds:
            body = general(number)
            if body == "0" and sign:
                sign = ""
            return sign + "".join(body if k == "general" else t for k, t in tokens if k != "comma")
        return sign + "".join(t for k, t in tokens if k in ("lit", "percent", "text")) or general(
            value
        )
    text = _digits(number, tokens)
    if sign and any(ch.isdigit() and ch != "0" for ch in text):
        return sign + text
    return text


def _digits(number: int | float, tokens: tuple[tuple[str, str], ...]) -> str:
    """The section's placeholders filled with `number` (>= 0), its literal text kept in place."""
    places = [i for i, (kind, _) in enumerate(tokens) if kind == "digit"]
    first = places[0]
    point = next((i for i, (k, _) in enumerate(tokens) if k == "point"), None)
    exp = next((i for i, (k, _) in enumerate(tokens) if k == "exp"), None)
    end_mantissa = exp if exp is not None else len(tokens)
    int_end = point if point is not None and point < end_mantissa else end_mantissa
    int_places = [i for i in places if i < int_end]
    dec_places = [i for i in places if int_end < i < end_mantissa]
    exp_places = [i for i in places if exp is not None and i > exp]
    percent = sum(1 for k, _ in tokens if k == "percent")
    # commas right after the last placeholder of the integer or the decimals divide by 1000 each
    scale = 0
    for after in {int_places[-1] if int_places else -1, max(int_places + dec_places)}:
        j = after + 1
        while 0 < j < len(tokens) and tokens[j][0] == "comma":
            scale += 1
            j += 1
    grouping = any(
        tokens[i][0] == "comma" for i in range(first, int_places[-1] if int_places else first)
    )
    amount = Decimal(repr(number)) if isinstance(number, float) else Decimal(number)
    amount = amount.scaleb(2 * percent - 3 * scale)
    exponent_text = ""
    if exp is not None:
        power = 0 if amount == 0 else amount.adjusted() - (max(len(int_places), 1) - 1)
        amount = amount.scaleb(-power)
        sign = "-" if power < 0 else ("+" if tokens[exp][1] == "+" else "")
        zeros = sum(1 for i in exp_places if tokens[i][1] == "0")
        exponent_text = "E" + sign + str(abs(power)).zfill(max(zeros, 1))
    decimals = len(dec_places)
    rounded = amount.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    whole, _, fraction = f"{rounded:f}".partition(".")
    whole = whole.lstrip("-")
    # optional decimals ('#', '?') drop trailing zeros; '?' keeps their width as spaces
    shown = list(fraction)
    for k in range(decimals - 1, -1, -1):
        if shown[k] != "0" or tokens[dec_places[k]][1] == "0":
            break
        shown[k] = " " if tokens[dec_places[k]][1] == "?" else ""
    fraction = "".join(shown)
    if whole == "0" and not any(tokens[i][1] == "0" for i in int_places):
        whole = ""
    # integer part: placeholders filled from the right, literal text between them kept
    digits = list(f"{int(whole):,}" if grouping and whole else whole)
    filled: list[str] = []
    for i in range(int_places[-1] if int_places else -1, first - 1, -1):
        kind, text = tokens[i]
        if kind == "digit":
            if i == int_places[0]:
                rest = "".join(digits)
                digits = []
                filled.append(rest or ("0" if text == "0" else " " if text == "?" else ""))
            elif digits:
                filled.append(digits.pop())
                if digits and digits[-1] == ",":
                    filled.append(digits.pop())
            else:
                filled.append("0" if text == "0" else " " if text == "?" else "")
        elif kind in ("lit", "percent"):
            filled.append(text)
    integer = "".join(reversed(filled))
    out: list[str] = []
    for i, (kind, text) in enumerate(tokens):
        if int_places and int_places[0] <= i <= int_places[-1]:
            if i == int_places[0]:
                out.append(integer)
        elif i == point:
            if not int_places and whole != "0":
                out.append(whole)
            out.append(".")
        elif i in dec_places:
            k = dec_places.index(i)
            out.append(fraction[k] if k < len(fraction) else "")
        elif i == exp:
            out.append(exponent_text)
        elif kind in ("lit", "percent", "text") and i not in exp_places:
            out.append(text)
    return "".join(out)


# -- Dates and times ------------------------------------------------------------------------------


def format_datetime(value: datetime | date | time | timedelta, code: str) -> str:
    """A date, time or duration shown with the format `code` (ISO form if it has no date part)."""
    tokens = _tokens(_split_sections(code)[0])
    parts: list[tuple[str, str]] = []
    for kind, text in tokens:
        if kind == "date" and text in (LONG_DATE, LONG_TIME):
            parts.extend(_tokens(text))
        else:
            parts.append((kind, text))
    if not any(kind == "date" for kind, _ in parts):
        return _iso(value)
    if isinstance(value, timedelta):
        moment, span = EXCEL_EPOCH + value, value
    elif isinstance(value, datetime):
        moment, span = value, value - EXCEL_EPOCH
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
        span = moment - EXCEL_EPOCH
    else:
        moment = datetime.combine(EXCEL_EPOCH.date(), value)
        span = moment - EXCEL_EPOCH
    fraction_digits = max((len(t) - 1 for k, t in parts if k == "date" and t[:1] == "."), default=0)
    step = timedelta(seconds=10**-fraction_digits)
    moment = EXCEL_EPOCH + _round(moment - EXCEL_EPOCH, step)
    span = _round(span, step)
    twelve = any(k == "date" and t.upper() in ("AM/PM", "A/P") for k, t in parts)
    codes = [t for k, t in parts if k == "date"]
    out: list[str] = []
    seen = 0
    for kind, text in parts:
        if kind != "date":
            if kind in ("lit", "comma", "point", "percent", "digit"):
                out.append(text)
            continue
        out.append(_date_part(text, codes, seen, moment, span, twelve))
        seen += 1
    return "".join(out)


def _round(span: timedelta, step: timedelta) -> timedelta:
    """`span` rounded half up to a multiple of `step` (Excel rounds what it does not show)."""
    micro = step // timedelta(microseconds=1)
    total = span // timedelta(microseconds=1)
    return timedelta(microseconds=(total + micro // 2) // micro * micro)


def _date_part(
    code: str, codes: list[str], index: int, moment: datetime, span: timedelta, twelve: bool
) -> str:
    """One date/time code of a format, `codes` being all of them (to tell minutes from months)."""
    if code.startswith("["):
        seconds = int(span.total_seconds())
        unit = code[1]
        amount = {"h": seconds // 3600, "m": seconds // 60, "s": seconds}[unit]
        return str(amount).zfill(len(code) - 2)
    if code.startswith("y"):
        return f"{moment.year:04d}" if len(code) > 2 else f"{moment.year % 100:02d}"
    if code.startswith("d"):
        if len(code) >= 4:
            return DAYS[moment.weekday()]
        if len(code) == 3:
            return DAYS[moment.weekday()][:3]
        return f"{moment.day:0{len(code)}d}"
    if code.startswith("h"):
        hour = moment.hour
        if twelve:
            hour = hour % 12 or 12
        return f"{hour:0{min(len(code), 2)}d}"
    if code.startswith("s"):
        return f"{moment.second:0{min(len(code), 2)}d}"
    if code.startswith("."):
        digits = len(code) - 1
        return "." + f"{moment.microsecond:06d}"[:digits]
    if code.upper() == "AM/PM":
        return "AM" if moment.hour < 12 else "PM"
    if code.upper() == "A/P":
        letter = "A" if moment.hour < 12 else "P"
        return letter if code[0].isupper() else letter.lower()
    if code.startswith("m"):
        before = codes[index - 1] if index > 0 else ""
        after = codes[index + 1] if index + 1 < len(codes) else ""
        if len(code) <= 2 and (before.startswith("h") or after.startswith("s")):
            return f"{moment.minute:0{len(code)}d}"
        if len(code) == 5:
            return MONTHS[moment.month - 1][0]
        if len(code) == 4:
            return MONTHS[moment.month - 1]
        if len(code) == 3:
            return MONTHS[moment.month - 1][:3]
        return f"{moment.month:0{len(code)}d}"
    return code


def _iso(value: datetime | date | time | timedelta) -> str:
    """A date or time in ISO form, for cells whose format says nothing about dates."""
    if isinstance(value, timedelta):
        seconds = int(value.total_seconds())
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    if isinstance(value, datetime):
        if value.time() == time(0):
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    return value.isoformat()

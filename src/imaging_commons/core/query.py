"""The filter language and the portable query layer.

A filter set (attribute -> list of values; OR within an attribute, AND across) is compiled to
a sqlglot expression tree with `?` placeholders: values never enter the SQL text, and the
same tree can be rendered for DuckDB (what runs here), Spark or BigQuery.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property

from sqlglot import exp

from .catalog import Catalog, normalise_collection_id
from .errors import InvalidRequest
from .schema import BY_NAME, CATEGORICAL, CONTINUOUS_NUMERIC

# suffix -> (number of values, builder(column, placeholders))
_RANGE_OPS = {
    "eq": (1, lambda c, p: exp.EQ(this=c, expression=p[0])),
    "gt": (1, lambda c, p: exp.GT(this=c, expression=p[0])),
    "gte": (1, lambda c, p: exp.GTE(this=c, expression=p[0])),
    "lt": (1, lambda c, p: exp.LT(this=c, expression=p[0])),
    "lte": (1, lambda c, p: exp.LTE(this=c, expression=p[0])),
    "btw": (2, lambda c, p: exp.and_(exp.GT(this=c, expression=p[0]),
                                     exp.LT(this=c, expression=p[1]))),
    "ebtw": (2, lambda c, p: exp.and_(exp.GTE(this=c, expression=p[0]),
                                      exp.LT(this=c, expression=p[1]))),
    "btwe": (2, lambda c, p: exp.and_(exp.GT(this=c, expression=p[0]),
                                      exp.LTE(this=c, expression=p[1]))),
    "ebtwe": (2, lambda c, p: exp.and_(exp.GTE(this=c, expression=p[0]),
                                       exp.LTE(this=c, expression=p[1]))),
}
RANGE_OPERATORS = tuple(_RANGE_OPS)  # the suffixes a continuous attribute's name takes
# Beyond this many values, a value list is passed as one list parameter and matched as a set:
# DuckDB tests an IN list of parameters value by value, row by row (5,000 UIDs took 16 s over
# the IDC catalogue, as a set 0.17 s), while a short list is faster as a list (it is pushed
# into the scan).
SET_MATCH_VALUES = 8
_SUFFIX = re.compile(r"^(?P<base>.+?)_(?P<op>" + "|".join(_RANGE_OPS) + r")$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Attribute:
    """A filterable attribute: a catalogue column, or a column of a clinical table (`source`,
    the name its clinical import gave; None for the catalogue's image data)."""

    name: str
    data_type: str
    units: str | None
    source: str | None = None
    table: str | None = None  # clinical table (None = the item relation)


@dataclass(frozen=True, slots=True)
class Output:
    """A column of an answer: the catalogue column `field`, behind the fixed text `prefix` if
    any, under `name` (how the row names it)."""

    name: str
    field: str
    prefix: str = ""

    def expression(self) -> exp.Expression:
        if self.field not in BY_NAME:
            raise InvalidRequest(f"Invalid field {self.name}", [self.name])
        if not self.prefix:
            return col(self.field)
        return exp.DPipe(this=exp.Literal.string(self.prefix), expression=col(self.field))


@dataclass
class Compiled:
    """A compiled query: the expression tree and the values for its placeholders, in order,
    and the catalogue relation it reads (whose key ranks can order its rows)."""

    tree: exp.Select
    params: list
    relation: str | None = None

    def sql(self, dialect: str = "duckdb") -> str:
        return self._duckdb_sql if dialect == "duckdb" else self.tree.sql(dialect=dialect)

    @cached_property
    def _duckdb_sql(self) -> str:
        """The SQL that runs here, generated once: sqlglot takes about a millisecond, and every
        page of a result asks for it."""
        return self.tree.sql(dialect="duckdb")

    @cached_property
    def key(self) -> str:
        """The query's identity, its SQL and values: what a materialised result is kept under."""
        text = json.dumps([self.sql(), self.params], default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def col(name: str, table: str | None = None) -> exp.Column:
    return exp.column(name, table=table, quoted=True)


def leading_column(select: exp.Select,
                   order: exp.Order | None = None) -> tuple[str, str] | None:
    """The column that orders a query's rows as far as its first output goes, when its order
    (`order`, else its own) starts with its first output, ascending, and that output is a
    column of the relation it reads, as it is or behind a fixed text (an Output's prefix):
    (the column's name, that text). Else None."""
    order = order if order is not None else select.args.get("order")
    if order is None or select.args.get("joins") or not select.expressions:
        return None
    first = select.expressions[0]
    leading = order.expressions[0]
    if not (isinstance(leading.this, exp.Column) and leading.this.name == first.alias_or_name
            and not leading.args.get("desc")):
        return None
    value, prefix = first.unalias(), ""
    if (isinstance(value, exp.DPipe) and isinstance(value.this, exp.Literal)
            and value.this.is_string):
        value, prefix = value.expression, value.this.name
    if isinstance(value, exp.Column) and not value.table:
        return value.name, prefix
    return None


class _Params:
    def __init__(self):
        self.values: list = []

    def add(self, value) -> exp.Placeholder:
        self.values.append(value)
        return exp.Placeholder()


def attributes(catalog: Catalog, version: int) -> dict[str, Attribute]:
    """The filterable attributes of a version: the catalogue's columns (typed by the schema)
    and every column of the version's clinical tables (typed by their stored type)."""
    out = {c.name: Attribute(c.name, c.data_type, c.units)
           for c in BY_NAME.values() if c.data_type}
    for entry in catalog.clinical_tables(version):
        for name, sql_type in entry["columns"].items():
            numeric = re.match(r"(BIG|SMALL|TINY|HUGE)?INT|DOUBLE|FLOAT|DECIMAL|REAL", sql_type)
            out.setdefault(name, Attribute(
                name, CONTINUOUS_NUMERIC if numeric else CATEGORICAL, None,
                entry["source"], entry["table"]))
    return out


def is_in(this: exp.Expression, values: list, params: _Params) -> exp.Expression:
    """`this IN values`, as a list of placeholders or, for many values, one list parameter."""
    if len(values) <= SET_MATCH_VALUES:
        return exp.In(this=this, expressions=[params.add(v) for v in values])
    members = exp.select(exp.Unnest(expressions=[params.add(list(values))]))
    return exp.In(this=this, query=exp.Subquery(this=members))


def _resolve(name: str, attrs: dict[str, Attribute]) -> tuple[Attribute, str | None] | None:
    """Find the attribute a filter key names, with its range suffix if any (case-insensitive)."""
    lower = {k.lower(): a for k, a in attrs.items()}
    if name.lower() in lower:
        return lower[name.lower()], None
    m = _SUFFIX.match(name)
    base = lower.get(m["base"].lower()) if m else None
    if m and base is not None and base.data_type == CONTINUOUS_NUMERIC:
        return base, m["op"].lower()
    return None


def _number(attr: str, value) -> float:
    if isinstance(value, bool):
        raise InvalidRequest(f"Filter {attr}: {value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"Filter {attr}: {value!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise InvalidRequest(f"Filter {attr}: {value!r} is not a finite number")
    return number


def _condition(key: str, attr: Attribute, op: str | None, values: list, column: exp.Expression,
               params: _Params) -> exp.Expression:
    if op is not None:
        arity, build = _RANGE_OPS[op]
        if len(values) != arity:
            raise InvalidRequest(f"Filter {key} takes {arity} value{'s' if arity > 1 else ''}, "
                              f"got {len(values)}")
        numbers = [_number(key, v) for v in values]
        if arity == 2 and numbers[0] > numbers[1]:
            raise InvalidRequest(f"Filter {key}: the lower bound is above the upper bound")
        return build(column, [params.add(n) for n in numbers])
    wants_null = any(isinstance(v, str) and v == "None" for v in values) or None in values
    rest = [v for v in values if v is not None and v != "None"]
    terms: list[exp.Expression] = []
    if wants_null:
        terms.append(exp.Is(this=column.copy(), expression=exp.Null()))
    if attr.data_type == CONTINUOUS_NUMERIC:
        if rest:
            terms.append(is_in(column.copy(), [_number(key, v) for v in rest], params))
    else:
        for v in rest:
            if isinstance(v, (dict, list)):
                raise InvalidRequest(f"Filter {key}: values must be strings or numbers")
        strings = [str(v) for v in rest]
        text = exp.Lower(this=exp.cast(column.copy(), "VARCHAR"))
        if attr.name == "collection_id":
            # stored normalised (lower case): compared as they are, the values let DuckDB skip
            # the row groups of other collections by their statistics (segments are sorted by
            # collection), which lower() hides from it
            strings = [normalise_collection_id(s) for s in strings]
            text = column.copy()
        if len(strings) == 1 and "%" in strings[0]:
            terms.append(exp.Like(this=text, expression=params.add(strings[0].lower())))
        elif strings:
            terms.append(is_in(text, [s.lower() for s in strings], params))
    if not terms:
        raise InvalidRequest(f"Filter {key} has no values")
    return exp.or_(*terms) if len(terms) > 1 else terms[0]


def where_clause(catalog: Catalog, version: int, filters: dict, hidden: frozenset[str],
                 params: _Params, item_alias: str | None = None) -> exp.Expression | None:
    """AND of one condition per filter key, plus the caller's restricted-collection exclusion."""
    if not isinstance(filters, dict):
        raise InvalidRequest("filters must be an object mapping attribute names to value lists")
    attrs = attributes(catalog, version)
    unknown = [k for k in filters if _resolve(k, attrs) is None]
    if unknown:
        raise InvalidRequest(f"Invalid filter attribute(s): {', '.join(map(str, unknown))}",
                             unknown)
    conditions: list[exp.Expression] = []
    for key, raw in filters.items():
        found = _resolve(key, attrs)
        assert found is not None  # (unknown keys were refused above)
        attr, op = found
        values = raw if isinstance(raw, list) else [raw]
        if attr.table is None:
            conditions.append(_condition(key, attr, op, values, col(attr.name, item_alias),
                                         params))
        else:
            # clinical: keep the patients whose clinical row matches
            inner = exp.select(col("PatientID")).from_(exp.to_table(attr.table, quoted=True)).where(
                _condition(key, attr, op, values, col(attr.name), params))
            conditions.append(exp.In(this=col("PatientID", item_alias),
                                     query=exp.Subquery(this=inner)))
    if hidden:
        conditions.append(exp.Not(this=is_in(col("collection_id", item_alias), sorted(hidden),
                                             params)))
    return exp.and_(*conditions) if conditions else None


def compile_select(catalog: Catalog, version: int, filters: dict,
                   outputs: list[tuple[str, exp.Expression]], hidden: frozenset[str],
                   distinct: bool = True, extra_where: exp.Expression | None = None) -> Compiled:
    """SELECT [DISTINCT] outputs FROM the version's items WHERE filters ORDER BY outputs."""
    params = _Params()
    where = where_clause(catalog, version, filters, hidden, params)
    if extra_where is not None:
        where = exp.and_(where, extra_where) if where is not None else extra_where
    items = catalog.relation(version, "items")
    relation = exp.to_table(items, quoted=True)
    tree = exp.select(*[e.copy().as_(name, quoted=True) for name, e in outputs]).from_(relation)
    if distinct:
        tree = tree.distinct()
    if where is not None:
        tree = tree.where(where)
    tree = tree.order_by(*[exp.Ordered(this=col(name), nulls_first=False) for name, _ in outputs])
    return Compiled(tree, params.values, items)

"""Partitions that know their shard: one small spec per partition, carried into its task.

A dataset at LAION scale has ~200,000 shards. Its metadata is one Dask partition per shard, and
several steps need each partition's own shard (the embedder opens its tar, ``save_metadata``
writes its Parquet, ``select_top`` keeps its share of tied scores). Two ways of pairing them
break at that scale or give wrong rows:

- ``to_delayed`` -> ``delayed`` -> ``dd.from_delayed`` culls the whole graph once per
  partition: the driver's time grows with the square of the shard count;
- ``partition_info["number"]`` is a partition's *position*, and dask's query planner renumbers
  positions when a user computes only some partitions (``ddf.partitions[5:10]``), so position 0
  of that computation would be paired with shard 0's tar, allowance or file.

:func:`from_shards` reads one partition per spec (``dd.from_map``; give a spec class a cheap
``__dask_tokenize__``, as :class:`~nemo_aesthetic.datasets.shards.Shard` has, or dask pickles each
one to name the graph), and :func:`map_shards` applies ``func(partition, spec)``
with spec ``i`` travelling inside partition ``i``'s task, so the task of a shard carries that
shard's spec only (never a list of all of them) and a partition subset still pairs each partition
with its own spec. A spec is any small picklable object (a :class:`~nemo_aesthetic.datasets.shards.Shard`,
a file path, an int); input sources describe their partitions with one and read them with
:func:`from_shards`. The result of :func:`map_shards` is one collection with one root, so
``ddf["keep"] = ddf.score >= 5`` stays partition-wise.
"""
from __future__ import annotations

import functools
import uuid
from typing import Any, Callable, Sequence

import dask
import dask.dataframe as dd
from dask._task_spec import List, Task, TaskRef
from dask.dataframe.dask_expr._collection import new_collection
from dask.dataframe.dask_expr._expr import Expr
from dask.tokenize import tokenize
from dask.utils import funcname


def from_shards(read: Callable, specs: Sequence[Any], *, meta, label: str, **kwargs) -> dd.DataFrame:
    """One partition per spec: ``read(spec, **kwargs)`` on a worker (``dd.from_map``, whose partition
    selection picks the specs themselves, so a subset still reads the right shards).

    The partitions come out with the dtypes ``read`` gives them (and ``meta`` says): see
    :func:`keep_dtypes`."""
    with keep_dtypes():
        return dd.from_map(read, list(specs), meta=meta, label=label, enforce_metadata=False, **kwargs)


def keep_dtypes():
    """Build a collection (``dd.from_map``, ``from_delayed``, ``from_pandas``) whose partitions keep the
    dtypes they have: dask's string conversion is switched off for that collection only (it would
    turn object columns of embedding arrays into text), never in the user's own config (NeMo Curator
    0.x switched it off for the whole process on import)."""
    return dask.config.set({"dataframe.convert-string": False})


class _SpecTasks(Expr):
    """Tasks of ``func`` over partitions of ``frame``, each with its own spec: named by ``label`` and
    ``token``, with the given ``meta``; column projections stop here (func may need any column)."""

    @functools.cached_property
    def _name(self) -> str:
        return f"{self.operand('label')}-{tokenize(self.frame._name, self.operand('token'))}"

    @functools.cached_property
    def _meta(self):
        return self.operand("meta")

    def _simplify_up(self, parent, dependents):
        return None


class _MapShards(_SpecTasks):
    """``func(partition i, specs[i], *args, **kwargs)`` for each partition of ``frame``.

    Not a Blockwise expression, on purpose: dask pushes a partition selection through Blockwise
    steps by renumbering their input, which would pair a selected partition with the spec of its
    new position. Selecting partitions of this expression takes its own tasks instead, each still
    paired with its own spec.
    """

    _parameters = ["frame", "func", "specs", "meta", "args", "kwargs", "label", "token", "costly"]
    _defaults = {"costly": False}

    def _divisions(self):
        return (None,) * (self.frame.npartitions + 1)

    def _layer(self) -> dict:
        func, specs, args, kwargs = (self.operand(k) for k in ("func", "specs", "args", "kwargs"))
        name, parent = self._name, self.frame._name
        return {(name, i): Task((name, i), _apply, func, TaskRef((parent, i)), spec, args, kwargs)
                for i, spec in enumerate(specs)}


def _apply(func, partition, spec, args, kwargs):
    return func(partition, spec, *args, **kwargs)


def map_shards(func: Callable, frame: dd.DataFrame, specs: Sequence[Any], *args, meta, label: str | None = None,
               token: str | None = None, costly: bool = False, **kwargs) -> dd.DataFrame:
    """``func(partition, spec, *args, **kwargs)`` for partition ``i`` of ``frame`` and ``specs[i]``.

    One task per partition; each carries its own spec, so the graph grows linearly in partitions
    and stays correct for any partition subset a user computes. ``meta`` is the result's empty
    frame. ``token`` names the result (default: random, as ``delayed(pure=False)``: hashing the
    function and its arguments would make the driver pickle large objects such as an embedder).
    ``costly=True`` marks a step worth not running twice (a model's forward): see :func:`computed_once`.
    """
    specs = list(specs)
    if len(specs) != frame.npartitions:
        raise ValueError(f"{len(specs)} specs for {frame.npartitions} partitions: partition i must be spec i "
                         "(do not repartition the metadata)")
    label = label or funcname(func).replace("_", "-").strip("-")
    expr = _MapShards(frame.expr, func, specs, meta, tuple(args), dict(kwargs), label, token or uuid.uuid4().hex,
                      costly)
    return new_collection(expr)


class _MapGroups(_SpecTasks):
    """``func([partitions i of group j], specs[j], *args, **kwargs)``: one task per group, which
    depends on its own partitions only and carries its own spec only."""

    _parameters = ["frame", "func", "groups", "specs", "meta", "args", "kwargs", "label", "token"]

    def _divisions(self):
        return (None,) * (len(self.operand("groups")) + 1)

    def _layer(self) -> dict:
        func, groups, specs, args, kwargs = (self.operand(k) for k in ("func", "groups", "specs", "args", "kwargs"))
        name, parent = self._name, self.frame._name
        return {(name, j): Task((name, j), _apply, func, List(*(TaskRef((parent, i)) for i in group)), spec,
                                args, kwargs)
                for j, (group, spec) in enumerate(zip(groups, specs))}


def map_groups(func: Callable, frame: dd.DataFrame, groups: Sequence[Sequence[int]], specs: Sequence[Any], *args,
               meta, label: str, **kwargs) -> dd.DataFrame:
    """One partition per group: ``func([partition i for i in groups[j]], specs[j], *args, **kwargs)``.

    For steps whose output partitions gather several input partitions (``to_webdataset``'s output
    shards take slices of several input shards): task j names its own input partitions and carries
    its own spec, so the graph stays linear; an input partition two groups share is computed once.
    """
    groups, specs = [tuple(g) for g in groups], list(specs)
    if len(groups) != len(specs):
        raise ValueError(f"{len(groups)} groups for {len(specs)} specs")
    expr = _MapGroups(frame.expr, func, groups, specs, meta, tuple(args), dict(kwargs), label, uuid.uuid4().hex)
    return new_collection(expr)


def computed_once(frame: dd.DataFrame) -> dd.DataFrame:
    """``frame`` persisted when its graph runs a costly step (:func:`map_shards` ``costly=True``: the
    embedder), else ``frame`` itself.

    For a step that passes over the data twice (a small aggregate first, then the work that needs
    it): reading Parquet twice costs little and keeps nothing in the cluster's memory, but
    embedding every image twice would double the job; a persisted frame is read from memory (and
    spilled to disk by the workers when it does not fit).
    """
    if any(isinstance(e, _MapShards) and e.operand("costly") for e in frame.expr.walk()):
        return frame.persist()
    return frame

"""Whole objects (DMVPNHub, DMVPNSpoke) and the entry points that read them from dicts and YAML."""

from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError

from dmvpn.api.constants import API_VERSION, GROUP, KIND_HUB, KIND_SPOKE, KINDS
from dmvpn.api.errors import Problem, ValidationFailed, problems_from, show
from dmvpn.api.spec import DMVPNHubSpec, DMVPNSpokeSpec, SpecModel, WireModel
from dmvpn.api.status import DMVPNHubStatus, DMVPNSpokeStatus
from dmvpn.api.types import DnsSubdomain, Generation, Timestamp


class ObjectMeta(WireModel):
    """The parts of metav1.ObjectMeta this project reads; other fields are kept as they are."""

    model_config = ConfigDict(extra="allow")

    name: DnsSubdomain
    """Object name (the objects are cluster-scoped: no namespace)."""
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    generation: Generation | None = None
    uid: str | None = None
    resource_version: str | None = None
    creation_timestamp: Timestamp | None = None


class DMVPNHub(SpecModel):
    """A DMVPN hub: NHRP next-hop server of a DMVPN cloud, on one node."""

    api_version: Literal["dmvpn.io/v1alpha1"] = API_VERSION
    kind: Literal["DMVPNHub"] = KIND_HUB
    metadata: ObjectMeta
    spec: DMVPNHubSpec
    status: DMVPNHubStatus = Field(default_factory=DMVPNHubStatus)

    @property
    def name(self) -> str:
        """metadata.name."""
        return self.metadata.name


class DMVPNSpoke(SpecModel):
    """DMVPN spokes: NHRP clients on one node (nodeName) or on every node a selector matches."""

    api_version: Literal["dmvpn.io/v1alpha1"] = API_VERSION
    kind: Literal["DMVPNSpoke"] = KIND_SPOKE
    metadata: ObjectMeta
    spec: DMVPNSpokeSpec
    status: DMVPNSpokeStatus = Field(default_factory=DMVPNSpokeStatus)

    @property
    def name(self) -> str:
        """metadata.name."""
        return self.metadata.name


DMVPNObject = DMVPNHub | DMVPNSpoke
MODELS: dict[str, type[DMVPNHub] | type[DMVPNSpoke]] = {KIND_HUB: DMVPNHub, KIND_SPOKE: DMVPNSpoke}


def is_dmvpn_document(data: object) -> bool:
    """True if ``data`` claims to be an object of our API group (any version or kind)."""
    if not isinstance(data, Mapping):
        return False
    api_version = data.get("apiVersion")
    return isinstance(api_version, str) and api_version.split("/")[0] == GROUP


def _label(data: Mapping[str, Any]) -> str:
    """``Kind/name`` as far as the document says, for attributing problems."""
    metadata = data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    kind = data.get("kind")
    parts = [part for part in (kind, name) if isinstance(part, str) and part]
    return "/".join(parts)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A one-line description of a YAML syntax error, with its position."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"not valid YAML: {error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return f"not valid YAML: {error}"


def _header_problems(data: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    api_version = data.get("apiVersion")
    if api_version != API_VERSION:
        if is_dmvpn_document(data):
            message = f"version not supported by this build, which reads {API_VERSION}, got {show(api_version)}"
        else:
            message = f"must be {API_VERSION}, got {show(api_version)}"
        problems.append(Problem("apiVersion", message))
    kind = data.get("kind")
    if kind not in KINDS:
        problems.append(Problem("kind", f"must be {' or '.join(KINDS)}, got {show(kind)}"))
    return problems


def parse_object(data: object) -> DMVPNObject:
    """Validate one object (as read from the API server or YAML) into a DMVPNHub or DMVPNSpoke.

    Raises ValidationFailed listing every problem, attributed to ``Kind/name``.
    """
    if not isinstance(data, Mapping):
        raise ValidationFailed([Problem("", f"must be a mapping (an object), got {show(data)}")])
    problems = _header_problems(data)
    if problems:
        raise ValidationFailed(problems).in_source(_label(data))
    model = MODELS[data["kind"]]
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ValidationFailed(problems_from(error, model)).in_source(_label(data)) from None


def load_documents(yaml_text: str, *, source: str = "", skip_foreign: bool = True) -> list[DMVPNObject]:
    """Every DMVPNHub/DMVPNSpoke in a multi-document YAML text, in order.

    Documents of other API groups (Secrets, Namespaces, ...) are skipped when ``skip_foreign`` (so a
    file made for ``kubectl apply`` loads as is), otherwise they are errors. Empty documents are skipped.
    Raises ValidationFailed listing the problems of all documents, each attributed to
    ``<source> document <n> (Kind/name)``.
    """
    try:
        documents = list(yaml.safe_load_all(yaml_text))
    except yaml.YAMLError as error:
        raise ValidationFailed([Problem("", _yaml_problem(error), source)]) from None
    objects: list[DMVPNObject] = []
    problems: list[Problem] = []
    for number, document in enumerate(documents, start=1):
        if document is None or (skip_foreign and isinstance(document, Mapping) and not is_dmvpn_document(document)):
            continue
        where = f"{source + ' ' if source else ''}document {number}"
        try:
            objects.append(parse_object(document))
        except ValidationFailed as failure:
            problems += [
                Problem(p.path, p.message, f"{where} ({p.source})" if p.source else where) for p in failure.problems
            ]
    if problems:
        raise ValidationFailed(problems)
    return objects


def dump_object(obj: DMVPNObject, *, include_status: bool = True) -> dict[str, Any]:
    """The wire form (camelCase, JSON types, no nulls) of an object, e.g. to apply or to print."""
    exclude = None if include_status else {"status"}
    return obj.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=exclude)


def dump_yaml(objects: list[DMVPNObject], *, include_status: bool = False) -> str:
    """Objects as a multi-document YAML text that :func:`load_documents` reads back."""
    return yaml.safe_dump_all([dump_object(obj, include_status=include_status) for obj in objects], sort_keys=False)

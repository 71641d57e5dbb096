"""The one tree of errors sipzone raises for bad input; each failure is its own class."""

from __future__ import annotations


class SipzoneError(Exception):
    """Base of every error sipzone raises on purpose; the message is for operators."""


class InvalidName(SipzoneError):
    """A domain name that sipzone will not store or match."""


class EmptyLabel(InvalidName):
    pass


class LabelTooLong(InvalidName):
    pass


class NameTooLong(InvalidName):
    pass


class BadCharacter(InvalidName):
    pass


class BadHyphen(InvalidName):
    pass


class TooFewLabels(InvalidName):
    pass


class IPLiteral(InvalidName):
    pass


class BadIDNA(InvalidName):
    pass


class BadWildcard(InvalidName):
    pass


class PublicSuffixWildcard(BadWildcard):
    """`*.B` where B is a public suffix (`*.com`, `*.co.uk`): it would claim others' names."""


class TenancyError(SipzoneError):
    """A change the reseller chain does not allow."""


class UnknownTenant(TenancyError):
    pass


class TenantCycle(TenancyError):
    pass


class NotPermitted(TenancyError):
    """The acting tenant does not control the namespace it tries to change."""


class Conflict(SipzoneError):
    """The object exists already (double add) or is still in use."""


class NotFound(SipzoneError):
    pass


class InvalidValue(SipzoneError):
    """A field other than a name is malformed: an address, a CIDR, a port, a URI."""

"""The one tree of errors sipzone raises for bad input; each failure is its own class."""

from __future__ import annotations


class SipzoneError(Exception):
    """Base of every error sipzone raises on purpose; the message is for operators."""


class InvalidName(SipzoneError):
    """A domain name that sipzone will not store or match."""


class EmptyLabel(InvalidName):
    """A name with an empty label: two dots in a row, a leading dot, or nothing at all."""


class LabelTooLong(InvalidName):
    """A label longer than 63 octets (RFC 1035 §2.3.4)."""


class NameTooLong(InvalidName):
    """A name longer than 253 octets in text, 255 on the wire (RFC 1035 §2.3.4)."""


class NoRoomForServiceNames(NameTooLong):
    """A name the DNS would extend (``_sips._tcp.D``, ``hostmaster.Z``) past 255 octets."""


class BadCharacter(InvalidName):
    """A label with a character other than letters, digits and '-'."""


class BadHyphen(InvalidName):
    """A label that starts or ends with '-', or has '--' at 3-4 without being an A-label."""


class TooFewLabels(InvalidName):
    """A single-label name: a SIP domain needs at least two."""


class IPLiteral(InvalidName):
    """An IP address or literal where a name is required."""


class BadIDNA(InvalidName):
    """A name that IDNA 2008 / UTS 46 refuses, or an A-label that does not decode."""


class MixedScript(InvalidName):
    """A label mixing scripts (Latin with Cyrillic, ...): the stuff of look-alike names."""


class BadWildcard(InvalidName):
    """A '*' anywhere but as the whole leftmost label."""


class PublicSuffixWildcard(BadWildcard):
    """`*.B` where B is a public suffix (`*.com`, `*.co.uk`): it would claim others' names."""


class TenancyError(SipzoneError):
    """A change the reseller chain does not allow."""


class UnknownTenant(TenancyError):
    """A tenant name that names no tenant."""


class TenantCycle(TenancyError):
    """A tenant that would be its own ancestor."""


class NotPermitted(TenancyError):
    """The acting tenant does not control the namespace it tries to change."""


class Conflict(SipzoneError):
    """The object exists already (double add) or is still in use."""


class TenantCaseTwin(Conflict):
    """A tenant name equal to an existing one but for case (`Acme` next to `acme`)."""


class NotFound(SipzoneError):
    """The object to change or remove does not exist."""


class InvalidValue(SipzoneError):
    """A field other than a name is malformed: an address, a CIDR, a port, a URI."""


class BadAddress(InvalidValue):
    """A virtual IP that is no plain unicast address a client could reach."""


class BadNetwork(InvalidValue):
    """A client network that is not a strict CIDR (no host bits, no scope) of unicast space."""


class OutOfRange(InvalidValue):
    """A number outside what its field (and the DNS record carrying it) can hold."""


class BadTenantName(InvalidValue):
    """A tenant name outside the tenant name syntax."""


class BadWord(InvalidValue):
    """A site name or region outside its syntax."""


class BadText(InvalidValue):
    """A free-text field with control characters or line breaks, or too long."""


class BadEmail(InvalidValue):
    """A support address that is not a plain ``local@domain`` address."""


class BadURL(InvalidValue):
    """A web or logo URL that is not a plain http(s) URL."""


class BadSipURI(InvalidValue):
    """An upstream that is not a SIP URI such as ``sip:core.example:5060``."""


class UnsupportedDatabase(InvalidValue):
    """A store URL for a database sipzone does not run on (only SQLite and PostgreSQL)."""


class ImportRefused(InvalidValue):
    """A `domain import` file with bad lines; nothing of it was added."""


class NotAuthenticated(SipzoneError):
    """No valid API token: missing, malformed, unknown, revoked or expired."""


class TooManyAttempts(SipzoneError):
    """Too many failed authentications from one client address; wait and retry."""


class BadCursor(InvalidValue):
    """A pagination cursor that this API did not hand out."""


class ProofFailed(SipzoneError):
    """The DNS lookup that proves control of a claimed name could not be made."""


class BadCertificate(InvalidValue):
    """A certificate file that holds no PEM certificate, or one that does not parse."""


class BadPrivateKey(InvalidValue):
    """A key file that holds no PEM private key, or an encrypted or unsupported one."""


class KeyMismatch(InvalidValue):
    """A private key that does not belong to the certificate it is given with."""


class ChainOrder(InvalidValue):
    """A chain whose certificates are not each signed by the one after it (leaf first)."""


class CertificateExpired(InvalidValue):
    """A certificate past its not-after (or before its not-before) time."""


class BadKeyType(InvalidValue):
    """A certificate key type sipzone cannot order (``ec256`` or ``rsa2048``)."""


class BadChallenge(InvalidValue):
    """A DNS-01 challenge name or value that cannot be published."""


class AcmeFailed(SipzoneError):
    """The ACME CA could not be reached, refused, or did not issue the certificate."""


class ChallengeNotSeen(AcmeFailed):
    """A DNS server did not answer a published challenge value in time."""

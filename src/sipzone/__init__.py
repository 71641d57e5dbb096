"""sipzone: run a SIP platform under domain names, with live SIP admission and DNS."""

__version__ = "0.1.0"

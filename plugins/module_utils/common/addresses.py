# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vmfleet.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Destination addresses (libvirt and SSH URIs) checked before anything uses them: a user or a host
taken from an inventory reaches ssh's command line and libvirt's URI parser as root, so only plain
names pass (issue #34)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import ipaddress
import re

from ansible_collections.vmfleet.kvm.plugins.module_utils.common.exceptions import InvalidArgument

try:
    from urllib.parse import urlsplit
except ImportError:  # Python 2 controllers never run this; keeps the import sanity test quiet
    from urlparse import urlsplit

_USER = re.compile(r'^[A-Za-z_][A-Za-z0-9._-]*$')
_LABEL = re.compile(r'^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$')


def check_user(user, what='the destination user'):
    if user is not None and not _USER.match(user):
        raise InvalidArgument("%s %r is not a plain user name" % (what, user),
                              hint="give a user of letters, digits, '.', '_' and '-' that starts with a letter or '_'")
    return user


def check_host(host, what='the destination host'):
    """``host``: a DNS name or an IPv4/IPv6 literal (no brackets), or InvalidArgument."""
    if host:
        try:
            ipaddress.ip_address(host)
            return host
        except ValueError:
            pass
        labels = host[:-1].split('.') if host.endswith('.') else host.split('.')
        if len(host) <= 253 and all(_LABEL.match(label) for label in labels):
            return host
    raise InvalidArgument("%s %r is not a host name or an IP address" % (what, host),
                          hint="give a DNS name (letters, digits, '-' and '.') or an IPv4/IPv6 address")


def parse(uri, what='destination_uri', plain=False):
    """urlsplit of ``uri`` with a checked user and host. ``plain``: the URI is built from inventory
    values, and a query string or fragment there (libvirt reads ``?command=``, ``?socket=``...)
    is refused."""
    try:
        u = urlsplit(uri)
        u.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError as e:
        raise InvalidArgument("%s %r is not a URI: %s" % (what, uri, e))
    if not u.hostname:
        raise InvalidArgument("%s %r names no host" % (what, uri),
                              hint="give the destination's libvirt as qemu+ssh://USER@HOST/system or "
                                   "qemu+tcp://HOST/system, or its SSH as ssh://USER@HOST")
    if plain and (u.query or u.fragment or '?' in uri or '#' in uri):
        raise InvalidArgument("%s %r carries a query string or a fragment" % (what, uri),
                              hint="give the URI without '?...' or '#...'")
    check_user(u.username, "%s %r: its user" % (what, uri))
    check_host(u.hostname, "%s %r: its host" % (what, uri))
    return u


def destination_host(uri):
    """The host part of a libvirt or SSH URI (``qemu+ssh://user@host:port/system`` -> ``host``)."""
    return parse(uri).hostname


def is_ip(host):
    """Whether ``host`` is an IPv4/IPv6 literal (not a name)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def bracketed(host):
    """``host`` as it goes before a ``:port`` (an IPv6 literal in brackets)."""
    return '[%s]' % host if ':' in host else host


def user_at(host, user=None):
    """``user@host`` of inventory values, both checked; an IPv6 host in brackets, as URIs write it."""
    check_host(host, 'the host address')
    check_user(user, 'the host user')
    return '%s@%s' % (user, bracketed(host)) if user else bracketed(host)

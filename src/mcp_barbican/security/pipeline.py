"""One MCP's security policies, in their one order, and the single way a request passes them.

Every per-MCP policy is a `Policy`: an ASGI layer that decides in full (its answer, counters
and audit events) and also offers a fast check, which admits the common request without the
layer's coroutine call. `Pipeline` stacks the layers in `ORDER` around the endpoint and,
for each request, first runs every policy's fast check over one scan of the headers:

- all of them admit: each policy settles what its layer would have done on admitting (the
  principal handed on, a success audited), and the request goes straight to the endpoint;
- any one cannot tell: the request goes through the layers, which decide in full.

The fast path loops over the same policies as the layers, so it cannot skip one; a layer
that is not a `Policy`, or a policy without a fast check, makes construction fail. A fast
check may not change anything when it says no. Only one policy may take something when it
says yes (the rate limit takes tokens); it runs after the others, so a refusal elsewhere
never leaves a token spent twice. Requests the fast path admits are admitted by the layers
too, with the same effects: tests/security/test_guard.py sends the same requests both ways.

A policy that decides per JSON-RPC message (authorization) hands what it decides with to the
relay through the scope, in its layer and in its `settle` alike, so both paths carry it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, Final

from mcp_barbican.asgi import CLIENT_IP_KEY

if TYPE_CHECKING:
    from mcp_barbican.security.principal import Principal
    from mcp_barbican.types import ASGIApp, Receive, Scope, Send

__all__ = ["ORDER", "Head", "Pipeline", "Policy"]

#: The per-MCP policies, outermost first. IP rules before everything that costs work; CORS
#: answers preflights before authentication; the rate limit after authentication, so it can
#: key on the principal and refused requests spend no token; the slots after it are for the
#: policies that read the request itself.
ORDER: Final = ("addresses", "cors", "authentication", "rate_limit", "input_limits", "authorization", "integrity")


class Head:
    """What the fast path learned about one request: its address, the headers the policies read."""

    __slots__ = ("ip", "kept", "principal", "values")

    def __init__(self, ip: str | None, values: dict[bytes, bytes], kept: list[tuple[bytes, bytes]]) -> None:
        self.ip = ip
        #: The values of the headers some policy reads (each sent at most once).
        self.values = values
        #: The request's headers without those a policy consumes (the credential).
        self.kept = kept
        #: Set by the authentication policy's fast check.
        self.principal: Principal | None = None


class Policy(ABC):
    """A per-MCP security layer that the pipeline can also run on its fast path."""

    #: Its place in ORDER.
    slot: ClassVar[str]
    #: Request headers its fast check reads; a request that repeats one goes through the layers.
    fast_headers: tuple[bytes, ...] = ()
    #: Headers it removes from the request it admits (the credential never reaches the upstream).
    consumes: tuple[bytes, ...] = ()
    #: Whether its fast check takes something when it admits (at most one policy per pipeline).
    fast_takes: ClassVar[bool] = False

    app: ASGIApp

    @property
    def decides_fast(self) -> bool:
        """False when its fast check could never admit (then the pipeline has no fast path)."""
        return True

    @abstractmethod
    def fast(self, scope: Scope, head: Head) -> bool:
        """Whether the layer would admit this request now; False changes nothing and means "decide in full"."""

    def settle(self, scope: Scope, head: Head) -> Awaitable[None] | None:
        """What the layer does on admitting a request, for one the fast path admitted."""
        return None

    @abstractmethod
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...


PolicyFactory = Callable[["ASGIApp"], Policy]


def _place(layer: object) -> int:
    if not isinstance(layer, Policy):
        raise TypeError(f"{type(layer).__name__} is not a pipeline Policy: the fast path could not run it")
    slot = getattr(layer, "slot", None)
    if slot not in ORDER:
        raise TypeError(f"{type(layer).__name__} has no slot in the pipeline's ORDER (slot {slot!r})")
    return ORDER.index(slot)


class Pipeline:
    """The policies of one MCP around its endpoint, with one fast path over the same list."""

    def __init__(self, endpoint: ASGIApp, factories: Sequence[PolicyFactory]) -> None:
        self.endpoint = endpoint
        app = endpoint
        built: list[Policy] = []
        # The slot decides the order, whatever order the factories come in: each is built
        # around the next inner one, so probe a factory's slot from its class when it has one.
        for make in sorted(factories, key=_factory_place, reverse=True):
            layer = make(app)
            _place(layer)
            built.append(layer)
            app = layer
        self.policies: tuple[Policy, ...] = tuple(reversed(built))
        slots = [policy.slot for policy in self.policies]
        if len(set(slots)) != len(slots):
            raise TypeError(f"two policies in one pipeline slot: {slots}")
        takers = [policy for policy in self.policies if policy.fast_takes]
        if len(takers) > 1:
            raise TypeError(f"more than one policy takes on the fast path: {[p.slot for p in takers]}")
        #: The full path: every layer, in order.
        self.layers: ASGIApp = app
        self._fast = bool(self.policies) and all(policy.decides_fast for policy in self.policies)
        checks = [p for p in self.policies if not p.fast_takes] + takers
        self._checks = tuple(policy.fast for policy in checks)
        self._settles = tuple(policy.settle for policy in self.policies if type(policy).settle is not Policy.settle)
        self._wanted = frozenset(name for policy in self.policies for name in policy.fast_headers)
        self._consumed = frozenset(name for policy in self.policies for name in policy.consumes)

    @property
    def fast_path(self) -> bool:
        """Whether requests may take the fast path (no policy, or one that never admits fast: never)."""
        return self._fast

    def policy(self, slot: str) -> Policy | None:
        return next((policy for policy in self.policies if policy.slot == slot), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = self.fast_head(scope)
        if head is None:
            await self.layers(scope, receive, send)
            return
        for settle in self._settles:
            pending = settle(scope, head)
            if pending is not None:
                await pending
        await self.endpoint(scope, receive, send)

    async def admit(self, scope: Scope) -> bool:
        """The fast path alone: True when every policy admitted the request and settled it (the scope
        then carries what they hand on), False when only the layers can decide it."""
        head = self.fast_head(scope)
        if head is None:
            return False
        for settle in self._settles:
            pending = settle(scope, head)
            if pending is not None:
                await pending
        return True

    def fast_head(self, scope: Scope) -> Head | None:
        """What the fast path learned of a request that every policy's fast check admits; None: ask the layers."""
        if not self._fast or scope["type"] != "http" or CLIENT_IP_KEY not in scope:
            return None
        wanted = self._wanted
        consumed = self._consumed
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        values: dict[bytes, bytes] = {}
        kept = headers
        if consumed:
            kept = []
            for header in headers:
                key = header[0]
                if key in wanted:
                    if key in values:  # ambiguous: the layers refuse or decide it
                        return None
                    values[key] = header[1]
                    if key in consumed:
                        continue
                kept.append(header)
        elif wanted:
            for key, value in headers:
                if key in wanted:
                    if key in values:
                        return None
                    values[key] = value
        head = Head(scope[CLIENT_IP_KEY], values, kept)
        for check in self._checks:
            if not check(scope, head):
                return None
        return head


def _factory_place(make: PolicyFactory) -> int:
    """A factory's slot index: from the class it builds (a class, or a functools.partial of one)."""
    target = getattr(make, "func", make)
    slot = getattr(target, "slot", None)
    if slot not in ORDER:
        raise TypeError(f"{getattr(target, '__name__', target)!r} builds no pipeline Policy with a slot in ORDER")
    return ORDER.index(slot)

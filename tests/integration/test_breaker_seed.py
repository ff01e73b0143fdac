"""The seed document's own breaker test, as written apart from imports, against the real Redis."""

import asyncio

import pytest

from ultra_tasks import CircuitBreaker, CircuitOpenException

pytestmark = pytest.mark.usefixtures("redis_client")


async def test_circuit_breaker_open_close_cycle():
    """Test that circuit breaker opens after failures and closes after recovery."""
    # Create circuit breaker with lower threshold for testing
    circuit_breaker = CircuitBreaker(
        name="test",
        failure_threshold=3,
        reset_timeout=1
    )

    # Create test function
    counter = 0
    @circuit_breaker
    async def test_function():
        nonlocal counter
        counter += 1
        if counter <= 3:
            raise Exception("Simulated failure")
        return "success"

    # Test initial failures
    for _ in range(3):
        with pytest.raises(Exception):
            await test_function()

    # Test circuit open
    with pytest.raises(CircuitOpenException):
        await test_function()

    # Wait for reset timeout
    await asyncio.sleep(1.1)

    # Test half-open state allows one request
    assert await test_function() == "success"

    # Test circuit closed after success
    assert await test_function() == "success"
    assert circuit_breaker.state == CircuitBreaker.CLOSED

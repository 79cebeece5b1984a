from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    BAD_REQUEST: _ClassVar[ErrorCode]
    UNAUTHENTICATED: _ClassVar[ErrorCode]
    FORBIDDEN: _ClassVar[ErrorCode]
    NOT_FOUND: _ClassVar[ErrorCode]
    LEASE_EXPIRED: _ClassVar[ErrorCode]
    QUEUE_FULL: _ClassVar[ErrorCode]
    PAYLOAD_TOO_LARGE: _ClassVar[ErrorCode]
    QUEUE_PAUSED: _ClassVar[ErrorCode]
    UNSUPPORTED_VERSION: _ClassVar[ErrorCode]
    SHUTTING_DOWN: _ClassVar[ErrorCode]
    STORAGE: _ClassVar[ErrorCode]
    INTERNAL: _ClassVar[ErrorCode]
    FRAME_TOO_LARGE: _ClassVar[ErrorCode]
    MALFORMED_FRAME: _ClassVar[ErrorCode]
    HELLO_REQUIRED: _ClassVar[ErrorCode]
    INVALID_QUEUE_NAME: _ClassVar[ErrorCode]
    EMPTY_PAYLOAD: _ClassVar[ErrorCode]
    TOO_MANY_CONNECTIONS: _ClassVar[ErrorCode]
    TOO_MANY_REQUESTS: _ClassVar[ErrorCode]
    TIMEOUT: _ClassVar[ErrorCode]
    ANSWER_TOO_LARGE: _ClassVar[ErrorCode]
    SCHEDULE_EXISTS: _ClassVar[ErrorCode]
    INVALID_SCHEDULE: _ClassVar[ErrorCode]
    NOT_LEADER: _ClassVar[ErrorCode]
    SEQUENCE_TOO_OLD: _ClassVar[ErrorCode]

class TaskStateFilter(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_FILTER_UNSPECIFIED: _ClassVar[TaskStateFilter]
    TASK_STATE_FILTER_READY: _ClassVar[TaskStateFilter]
    TASK_STATE_FILTER_DELAYED: _ClassVar[TaskStateFilter]
    TASK_STATE_FILTER_LEASED: _ClassVar[TaskStateFilter]
    TASK_STATE_FILTER_DEAD: _ClassVar[TaskStateFilter]

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNKNOWN: _ClassVar[TaskState]
    TASK_STATE_READY: _ClassVar[TaskState]
    TASK_STATE_DELAYED: _ClassVar[TaskState]
    TASK_STATE_LEASED: _ClassVar[TaskState]
    TASK_STATE_SUCCEEDED: _ClassVar[TaskState]
    TASK_STATE_DEAD: _ClassVar[TaskState]

class CatchUp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CATCH_UP_ONE: _ClassVar[CatchUp]
    CATCH_UP_NONE: _ClassVar[CatchUp]
    CATCH_UP_ALL: _ClassVar[CatchUp]
ERROR_CODE_UNSPECIFIED: ErrorCode
BAD_REQUEST: ErrorCode
UNAUTHENTICATED: ErrorCode
FORBIDDEN: ErrorCode
NOT_FOUND: ErrorCode
LEASE_EXPIRED: ErrorCode
QUEUE_FULL: ErrorCode
PAYLOAD_TOO_LARGE: ErrorCode
QUEUE_PAUSED: ErrorCode
UNSUPPORTED_VERSION: ErrorCode
SHUTTING_DOWN: ErrorCode
STORAGE: ErrorCode
INTERNAL: ErrorCode
FRAME_TOO_LARGE: ErrorCode
MALFORMED_FRAME: ErrorCode
HELLO_REQUIRED: ErrorCode
INVALID_QUEUE_NAME: ErrorCode
EMPTY_PAYLOAD: ErrorCode
TOO_MANY_CONNECTIONS: ErrorCode
TOO_MANY_REQUESTS: ErrorCode
TIMEOUT: ErrorCode
ANSWER_TOO_LARGE: ErrorCode
SCHEDULE_EXISTS: ErrorCode
INVALID_SCHEDULE: ErrorCode
NOT_LEADER: ErrorCode
SEQUENCE_TOO_OLD: ErrorCode
TASK_STATE_FILTER_UNSPECIFIED: TaskStateFilter
TASK_STATE_FILTER_READY: TaskStateFilter
TASK_STATE_FILTER_DELAYED: TaskStateFilter
TASK_STATE_FILTER_LEASED: TaskStateFilter
TASK_STATE_FILTER_DEAD: TaskStateFilter
TASK_STATE_UNKNOWN: TaskState
TASK_STATE_READY: TaskState
TASK_STATE_DELAYED: TaskState
TASK_STATE_LEASED: TaskState
TASK_STATE_SUCCEEDED: TaskState
TASK_STATE_DEAD: TaskState
CATCH_UP_ONE: CatchUp
CATCH_UP_NONE: CatchUp
CATCH_UP_ALL: CatchUp

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("id", "hello", "publish", "subscribe", "unsubscribe", "ack", "nack", "extend", "ping", "get_task", "wait_result", "release", "list_queues", "get_queue", "set_queue_config", "peek", "purge", "set_paused", "redrive", "delete_queue", "get_payload", "add_schedule", "list_schedules", "remove_schedule", "set_schedule_paused")
    ID_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    EXTEND_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    GET_TASK_FIELD_NUMBER: _ClassVar[int]
    WAIT_RESULT_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    LIST_QUEUES_FIELD_NUMBER: _ClassVar[int]
    GET_QUEUE_FIELD_NUMBER: _ClassVar[int]
    SET_QUEUE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    PEEK_FIELD_NUMBER: _ClassVar[int]
    PURGE_FIELD_NUMBER: _ClassVar[int]
    SET_PAUSED_FIELD_NUMBER: _ClassVar[int]
    REDRIVE_FIELD_NUMBER: _ClassVar[int]
    DELETE_QUEUE_FIELD_NUMBER: _ClassVar[int]
    GET_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ADD_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    LIST_SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    REMOVE_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    SET_SCHEDULE_PAUSED_FIELD_NUMBER: _ClassVar[int]
    id: int
    hello: Hello
    publish: Publish
    subscribe: Subscribe
    unsubscribe: Unsubscribe
    ack: Ack
    nack: Nack
    extend: Extend
    ping: Ping
    get_task: GetTask
    wait_result: WaitResult
    release: Release
    list_queues: ListQueues
    get_queue: GetQueue
    set_queue_config: SetQueueConfig
    peek: Peek
    purge: Purge
    set_paused: SetPaused
    redrive: Redrive
    delete_queue: DeleteQueue
    get_payload: GetPayload
    add_schedule: AddSchedule
    list_schedules: ListSchedules
    remove_schedule: RemoveSchedule
    set_schedule_paused: SetSchedulePaused
    def __init__(self, id: _Optional[int] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., publish: _Optional[_Union[Publish, _Mapping]] = ..., subscribe: _Optional[_Union[Subscribe, _Mapping]] = ..., unsubscribe: _Optional[_Union[Unsubscribe, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., nack: _Optional[_Union[Nack, _Mapping]] = ..., extend: _Optional[_Union[Extend, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., get_task: _Optional[_Union[GetTask, _Mapping]] = ..., wait_result: _Optional[_Union[WaitResult, _Mapping]] = ..., release: _Optional[_Union[Release, _Mapping]] = ..., list_queues: _Optional[_Union[ListQueues, _Mapping]] = ..., get_queue: _Optional[_Union[GetQueue, _Mapping]] = ..., set_queue_config: _Optional[_Union[SetQueueConfig, _Mapping]] = ..., peek: _Optional[_Union[Peek, _Mapping]] = ..., purge: _Optional[_Union[Purge, _Mapping]] = ..., set_paused: _Optional[_Union[SetPaused, _Mapping]] = ..., redrive: _Optional[_Union[Redrive, _Mapping]] = ..., delete_queue: _Optional[_Union[DeleteQueue, _Mapping]] = ..., get_payload: _Optional[_Union[GetPayload, _Mapping]] = ..., add_schedule: _Optional[_Union[AddSchedule, _Mapping]] = ..., list_schedules: _Optional[_Union[ListSchedules, _Mapping]] = ..., remove_schedule: _Optional[_Union[RemoveSchedule, _Mapping]] = ..., set_schedule_paused: _Optional[_Union[SetSchedulePaused, _Mapping]] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("response", "delivery")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    response: Response
    delivery: Delivery
    def __init__(self, response: _Optional[_Union[Response, _Mapping]] = ..., delivery: _Optional[_Union[Delivery, _Mapping]] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("id", "error", "hello", "publish", "subscribe", "ok", "extend", "pong", "task", "queues", "queue", "peek", "count", "subscription_ended", "payload", "schedules", "schedule")
    ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    EXTEND_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PEEK_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ENDED_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    id: int
    error: Error
    hello: HelloOk
    publish: PublishOk
    subscribe: SubscribeOk
    ok: Empty
    extend: ExtendOk
    pong: Pong
    task: TaskInfo
    queues: QueueList
    queue: QueueInfo
    peek: PeekOk
    count: CountOk
    subscription_ended: SubscriptionEnded
    payload: TaskPayload
    schedules: ScheduleList
    schedule: ScheduleInfo
    def __init__(self, id: _Optional[int] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., hello: _Optional[_Union[HelloOk, _Mapping]] = ..., publish: _Optional[_Union[PublishOk, _Mapping]] = ..., subscribe: _Optional[_Union[SubscribeOk, _Mapping]] = ..., ok: _Optional[_Union[Empty, _Mapping]] = ..., extend: _Optional[_Union[ExtendOk, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ..., task: _Optional[_Union[TaskInfo, _Mapping]] = ..., queues: _Optional[_Union[QueueList, _Mapping]] = ..., queue: _Optional[_Union[QueueInfo, _Mapping]] = ..., peek: _Optional[_Union[PeekOk, _Mapping]] = ..., count: _Optional[_Union[CountOk, _Mapping]] = ..., subscription_ended: _Optional[_Union[SubscriptionEnded, _Mapping]] = ..., payload: _Optional[_Union[TaskPayload, _Mapping]] = ..., schedules: _Optional[_Union[ScheduleList, _Mapping]] = ..., schedule: _Optional[_Union[ScheduleInfo, _Mapping]] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_version", "client_name", "token")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    client_name: str
    token: str
    def __init__(self, protocol_version: _Optional[int] = ..., client_name: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class HelloOk(_message.Message):
    __slots__ = ("protocol_version", "server_version", "node_id", "limits", "cluster")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    server_version: str
    node_id: str
    limits: Limits
    cluster: ClusterInfo
    def __init__(self, protocol_version: _Optional[int] = ..., server_version: _Optional[str] = ..., node_id: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., cluster: _Optional[_Union[ClusterInfo, _Mapping]] = ...) -> None: ...

class ClusterInfo(_message.Message):
    __slots__ = ("cluster_id", "leader", "members")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    leader: int
    members: _containers.RepeatedCompositeFieldContainer[ClusterMember]
    def __init__(self, cluster_id: _Optional[str] = ..., leader: _Optional[int] = ..., members: _Optional[_Iterable[_Union[ClusterMember, _Mapping]]] = ...) -> None: ...

class ClusterMember(_message.Message):
    __slots__ = ("node_id", "client_addr")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDR_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    client_addr: str
    def __init__(self, node_id: _Optional[int] = ..., client_addr: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_frame_bytes", "max_payload_bytes", "max_batch", "max_prefetch", "max_lease_ms", "max_inflight_requests")
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_PREFETCH_FIELD_NUMBER: _ClassVar[int]
    MAX_LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    max_frame_bytes: int
    max_payload_bytes: int
    max_batch: int
    max_prefetch: int
    max_lease_ms: int
    max_inflight_requests: int
    def __init__(self, max_frame_bytes: _Optional[int] = ..., max_payload_bytes: _Optional[int] = ..., max_batch: _Optional[int] = ..., max_prefetch: _Optional[int] = ..., max_lease_ms: _Optional[int] = ..., max_inflight_requests: _Optional[int] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("queue", "payload", "headers", "priority", "delay_ms", "run_at_ms", "max_attempts", "lease_ms", "idempotency_key", "expires_in_ms")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    RUN_AT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_MS_FIELD_NUMBER: _ClassVar[int]
    queue: str
    payload: bytes
    headers: _containers.ScalarMap[str, bytes]
    priority: int
    delay_ms: int
    run_at_ms: int
    max_attempts: int
    lease_ms: int
    idempotency_key: str
    expires_in_ms: int
    def __init__(self, queue: _Optional[str] = ..., payload: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, bytes]] = ..., priority: _Optional[int] = ..., delay_ms: _Optional[int] = ..., run_at_ms: _Optional[int] = ..., max_attempts: _Optional[int] = ..., lease_ms: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., expires_in_ms: _Optional[int] = ...) -> None: ...

class Publish(_message.Message):
    __slots__ = ("tasks", "producer_id", "sequence")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskSpec]
    producer_id: str
    sequence: int
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskSpec, _Mapping]]] = ..., producer_id: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class PublishOk(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Published]
    def __init__(self, tasks: _Optional[_Iterable[_Union[Published, _Mapping]]] = ...) -> None: ...

class Published(_message.Message):
    __slots__ = ("task_id", "duplicate")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    duplicate: bool
    def __init__(self, task_id: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class Subscribe(_message.Message):
    __slots__ = ("queue", "prefetch")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    queue: str
    prefetch: int
    def __init__(self, queue: _Optional[str] = ..., prefetch: _Optional[int] = ...) -> None: ...

class SubscribeOk(_message.Message):
    __slots__ = ("subscription_id",)
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    subscription_id: int
    def __init__(self, subscription_id: _Optional[int] = ...) -> None: ...

class Unsubscribe(_message.Message):
    __slots__ = ("subscription_id",)
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    subscription_id: int
    def __init__(self, subscription_id: _Optional[int] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("subscription_id", "task_id", "lease_token", "attempt", "max_attempts", "deadline_ms", "priority", "payload", "headers", "created_at_ms", "queue")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    subscription_id: int
    task_id: int
    lease_token: int
    attempt: int
    max_attempts: int
    deadline_ms: int
    priority: int
    payload: bytes
    headers: _containers.ScalarMap[str, bytes]
    created_at_ms: int
    queue: str
    def __init__(self, subscription_id: _Optional[int] = ..., task_id: _Optional[int] = ..., lease_token: _Optional[int] = ..., attempt: _Optional[int] = ..., max_attempts: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., priority: _Optional[int] = ..., payload: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, bytes]] = ..., created_at_ms: _Optional[int] = ..., queue: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("task_id", "lease_token", "result")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    lease_token: int
    result: bytes
    def __init__(self, task_id: _Optional[int] = ..., lease_token: _Optional[int] = ..., result: _Optional[bytes] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("task_id", "lease_token", "delay_ms", "dead", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    lease_token: int
    delay_ms: int
    dead: bool
    reason: str
    def __init__(self, task_id: _Optional[int] = ..., lease_token: _Optional[int] = ..., delay_ms: _Optional[int] = ..., dead: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("task_id", "lease_token")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    lease_token: int
    def __init__(self, task_id: _Optional[int] = ..., lease_token: _Optional[int] = ...) -> None: ...

class Extend(_message.Message):
    __slots__ = ("task_id", "lease_token", "extend_ms")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXTEND_MS_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    lease_token: int
    extend_ms: int
    def __init__(self, task_id: _Optional[int] = ..., lease_token: _Optional[int] = ..., extend_ms: _Optional[int] = ...) -> None: ...

class ExtendOk(_message.Message):
    __slots__ = ("deadline_ms",)
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    deadline_ms: int
    def __init__(self, deadline_ms: _Optional[int] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Pong(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListQueues(_message.Message):
    __slots__ = ("after", "limit")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after: str
    limit: int
    def __init__(self, after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class GetQueue(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class QueueSettings(_message.Message):
    __slots__ = ("lease_ms", "max_attempts", "backoff_min_ms", "backoff_max_ms", "max_length", "result_ttl_ms", "dedup_window_ms", "paused", "max_in_flight", "rate_limit", "rate_burst", "drop_expired", "keep_acked")
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MIN_MS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MAX_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    RESULT_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    DEDUP_WINDOW_MS_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RATE_BURST_FIELD_NUMBER: _ClassVar[int]
    DROP_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    KEEP_ACKED_FIELD_NUMBER: _ClassVar[int]
    lease_ms: int
    max_attempts: int
    backoff_min_ms: int
    backoff_max_ms: int
    max_length: int
    result_ttl_ms: int
    dedup_window_ms: int
    paused: bool
    max_in_flight: int
    rate_limit: int
    rate_burst: int
    drop_expired: bool
    keep_acked: bool
    def __init__(self, lease_ms: _Optional[int] = ..., max_attempts: _Optional[int] = ..., backoff_min_ms: _Optional[int] = ..., backoff_max_ms: _Optional[int] = ..., max_length: _Optional[int] = ..., result_ttl_ms: _Optional[int] = ..., dedup_window_ms: _Optional[int] = ..., paused: _Optional[bool] = ..., max_in_flight: _Optional[int] = ..., rate_limit: _Optional[int] = ..., rate_burst: _Optional[int] = ..., drop_expired: _Optional[bool] = ..., keep_acked: _Optional[bool] = ...) -> None: ...

class QueueRates(_message.Message):
    __slots__ = ("published", "delivered", "acked", "nacked", "expired", "dead_lettered")
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    NACKED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    published: float
    delivered: float
    acked: float
    nacked: float
    expired: float
    dead_lettered: float
    def __init__(self, published: _Optional[float] = ..., delivered: _Optional[float] = ..., acked: _Optional[float] = ..., nacked: _Optional[float] = ..., expired: _Optional[float] = ..., dead_lettered: _Optional[float] = ...) -> None: ...

class QueueInfo(_message.Message):
    __slots__ = ("name", "ready", "delayed", "leased", "dead", "consumers", "published", "delivered", "acked", "nacked", "expired", "dead_lettered", "redelivered", "rates", "oldest_ready_age_ms", "paused", "config", "expired_tasks")
    NAME_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    DELAYED_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    NACKED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    REDELIVERED_FIELD_NUMBER: _ClassVar[int]
    RATES_FIELD_NUMBER: _ClassVar[int]
    OLDEST_READY_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_TASKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    ready: int
    delayed: int
    leased: int
    dead: int
    consumers: int
    published: int
    delivered: int
    acked: int
    nacked: int
    expired: int
    dead_lettered: int
    redelivered: int
    rates: QueueRates
    oldest_ready_age_ms: int
    paused: bool
    config: QueueSettings
    expired_tasks: int
    def __init__(self, name: _Optional[str] = ..., ready: _Optional[int] = ..., delayed: _Optional[int] = ..., leased: _Optional[int] = ..., dead: _Optional[int] = ..., consumers: _Optional[int] = ..., published: _Optional[int] = ..., delivered: _Optional[int] = ..., acked: _Optional[int] = ..., nacked: _Optional[int] = ..., expired: _Optional[int] = ..., dead_lettered: _Optional[int] = ..., redelivered: _Optional[int] = ..., rates: _Optional[_Union[QueueRates, _Mapping]] = ..., oldest_ready_age_ms: _Optional[int] = ..., paused: _Optional[bool] = ..., config: _Optional[_Union[QueueSettings, _Mapping]] = ..., expired_tasks: _Optional[int] = ...) -> None: ...

class QueueList(_message.Message):
    __slots__ = ("queues", "more")
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[QueueInfo]
    more: bool
    def __init__(self, queues: _Optional[_Iterable[_Union[QueueInfo, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class SetQueueConfig(_message.Message):
    __slots__ = ("queue", "lease_ms", "max_attempts", "backoff_min_ms", "backoff_max_ms", "max_length", "result_ttl_ms", "dedup_window_ms", "max_in_flight", "rate_limit", "rate_burst", "drop_expired", "keep_acked")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MIN_MS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MAX_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    RESULT_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    DEDUP_WINDOW_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RATE_BURST_FIELD_NUMBER: _ClassVar[int]
    DROP_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    KEEP_ACKED_FIELD_NUMBER: _ClassVar[int]
    queue: str
    lease_ms: int
    max_attempts: int
    backoff_min_ms: int
    backoff_max_ms: int
    max_length: int
    result_ttl_ms: int
    dedup_window_ms: int
    max_in_flight: int
    rate_limit: int
    rate_burst: int
    drop_expired: bool
    keep_acked: bool
    def __init__(self, queue: _Optional[str] = ..., lease_ms: _Optional[int] = ..., max_attempts: _Optional[int] = ..., backoff_min_ms: _Optional[int] = ..., backoff_max_ms: _Optional[int] = ..., max_length: _Optional[int] = ..., result_ttl_ms: _Optional[int] = ..., dedup_window_ms: _Optional[int] = ..., max_in_flight: _Optional[int] = ..., rate_limit: _Optional[int] = ..., rate_burst: _Optional[int] = ..., drop_expired: _Optional[bool] = ..., keep_acked: _Optional[bool] = ...) -> None: ...

class SetPaused(_message.Message):
    __slots__ = ("queue", "paused")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    queue: str
    paused: bool
    def __init__(self, queue: _Optional[str] = ..., paused: _Optional[bool] = ...) -> None: ...

class Peek(_message.Message):
    __slots__ = ("queue", "state", "limit", "preview_bytes")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_BYTES_FIELD_NUMBER: _ClassVar[int]
    queue: str
    state: TaskStateFilter
    limit: int
    preview_bytes: int
    def __init__(self, queue: _Optional[str] = ..., state: _Optional[_Union[TaskStateFilter, str]] = ..., limit: _Optional[int] = ..., preview_bytes: _Optional[int] = ...) -> None: ...

class PeekedTask(_message.Message):
    __slots__ = ("task_id", "state", "priority", "attempts", "max_attempts", "created_at_ms", "updated_at_ms", "not_before_ms", "lease_holder", "lease_deadline_ms", "last_error", "payload", "headers", "truncated", "payload_bytes")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_MS_FIELD_NUMBER: _ClassVar[int]
    LEASE_HOLDER_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    state: TaskStateFilter
    priority: int
    attempts: int
    max_attempts: int
    created_at_ms: int
    updated_at_ms: int
    not_before_ms: int
    lease_holder: str
    lease_deadline_ms: int
    last_error: str
    payload: bytes
    headers: _containers.ScalarMap[str, bytes]
    truncated: bool
    payload_bytes: int
    def __init__(self, task_id: _Optional[int] = ..., state: _Optional[_Union[TaskStateFilter, str]] = ..., priority: _Optional[int] = ..., attempts: _Optional[int] = ..., max_attempts: _Optional[int] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., not_before_ms: _Optional[int] = ..., lease_holder: _Optional[str] = ..., lease_deadline_ms: _Optional[int] = ..., last_error: _Optional[str] = ..., payload: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, bytes]] = ..., truncated: _Optional[bool] = ..., payload_bytes: _Optional[int] = ...) -> None: ...

class PeekOk(_message.Message):
    __slots__ = ("tasks", "more")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[PeekedTask]
    more: bool
    def __init__(self, tasks: _Optional[_Iterable[_Union[PeekedTask, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class Purge(_message.Message):
    __slots__ = ("queue", "state")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    state: TaskStateFilter
    def __init__(self, queue: _Optional[str] = ..., state: _Optional[_Union[TaskStateFilter, str]] = ...) -> None: ...

class Redrive(_message.Message):
    __slots__ = ("queue", "limit")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    queue: str
    limit: int
    def __init__(self, queue: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class DeleteQueue(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class CountOk(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class SubscriptionEnded(_message.Message):
    __slots__ = ("queue", "reason")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    queue: str
    reason: str
    def __init__(self, queue: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetPayload(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    def __init__(self, task_id: _Optional[int] = ...) -> None: ...

class TaskPayload(_message.Message):
    __slots__ = ("task_id", "queue", "payload", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    queue: str
    payload: bytes
    headers: _containers.ScalarMap[str, bytes]
    def __init__(self, task_id: _Optional[int] = ..., queue: _Optional[str] = ..., payload: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class GetTask(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    def __init__(self, task_id: _Optional[int] = ...) -> None: ...

class WaitResult(_message.Message):
    __slots__ = ("task_id", "timeout_ms")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    timeout_ms: int
    def __init__(self, task_id: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class LeaseHolder(_message.Message):
    __slots__ = ("connection_id", "consumer", "deadline_ms")
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    connection_id: int
    consumer: str
    deadline_ms: int
    def __init__(self, connection_id: _Optional[int] = ..., consumer: _Optional[str] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("task_id", "state", "queue", "priority", "attempts", "max_attempts", "last_error", "lease", "created_at_ms", "updated_at_ms", "not_before_ms", "result", "expires_at_ms")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_MS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    state: TaskState
    queue: str
    priority: int
    attempts: int
    max_attempts: int
    last_error: str
    lease: LeaseHolder
    created_at_ms: int
    updated_at_ms: int
    not_before_ms: int
    result: bytes
    expires_at_ms: int
    def __init__(self, task_id: _Optional[int] = ..., state: _Optional[_Union[TaskState, str]] = ..., queue: _Optional[str] = ..., priority: _Optional[int] = ..., attempts: _Optional[int] = ..., max_attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., lease: _Optional[_Union[LeaseHolder, _Mapping]] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., not_before_ms: _Optional[int] = ..., result: _Optional[bytes] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class ScheduleSpec(_message.Message):
    __slots__ = ("name", "queue", "cron", "tz", "payload", "headers", "priority", "max_attempts", "catch_up")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    TZ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CATCH_UP_FIELD_NUMBER: _ClassVar[int]
    name: str
    queue: str
    cron: str
    tz: str
    payload: bytes
    headers: _containers.ScalarMap[str, bytes]
    priority: int
    max_attempts: int
    catch_up: CatchUp
    def __init__(self, name: _Optional[str] = ..., queue: _Optional[str] = ..., cron: _Optional[str] = ..., tz: _Optional[str] = ..., payload: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, bytes]] = ..., priority: _Optional[int] = ..., max_attempts: _Optional[int] = ..., catch_up: _Optional[_Union[CatchUp, str]] = ...) -> None: ...

class AddSchedule(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: ScheduleSpec
    def __init__(self, schedule: _Optional[_Union[ScheduleSpec, _Mapping]] = ...) -> None: ...

class ListSchedules(_message.Message):
    __slots__ = ("after", "limit")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after: str
    limit: int
    def __init__(self, after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class RemoveSchedule(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SetSchedulePaused(_message.Message):
    __slots__ = ("name", "paused")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    name: str
    paused: bool
    def __init__(self, name: _Optional[str] = ..., paused: _Optional[bool] = ...) -> None: ...

class ScheduleInfo(_message.Message):
    __slots__ = ("spec", "paused", "next_run_ms", "last_run_ms", "last_task_id", "created_ms")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    NEXT_RUN_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    spec: ScheduleSpec
    paused: bool
    next_run_ms: int
    last_run_ms: int
    last_task_id: int
    created_ms: int
    def __init__(self, spec: _Optional[_Union[ScheduleSpec, _Mapping]] = ..., paused: _Optional[bool] = ..., next_run_ms: _Optional[int] = ..., last_run_ms: _Optional[int] = ..., last_task_id: _Optional[int] = ..., created_ms: _Optional[int] = ...) -> None: ...

class ScheduleList(_message.Message):
    __slots__ = ("schedules", "more")
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[ScheduleInfo]
    more: bool
    def __init__(self, schedules: _Optional[_Iterable[_Union[ScheduleInfo, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

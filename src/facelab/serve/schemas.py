"""Pydantic models of the JSON the API returns (they make the OpenAPI document)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    status: int
    type: str = Field(description="short machine-readable kind, e.g. no_face, forbidden")
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody


class IdentityMatch(BaseModel):
    name: str | None = Field(description="the enrolled identity within the threshold, else null")
    nearest: str | None
    distance: float | None
    threshold: float
    match: bool


class FaceOut(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in pixels of the decoded (EXIF-upright) image")
    score: float
    stage: str
    landmarks: list[list[float]] | None = Field(None, description="5 points (eyes, nose, mouth corners)")
    attributes: dict[str, str] | None = Field(None, description="mask, gender, age labels")
    class18: int | None = Field(None, description="the competition's 18-class id")
    probabilities: dict[str, dict[str, float]] | None = None
    identity: IdentityMatch | None = Field(None, description="with identify=true")


class AnalyzeOut(BaseModel):
    width: int
    height: int
    faces: list[FaceOut]
    seconds: float


class VerifyOut(BaseModel):
    distance: float
    threshold: float
    same: bool
    against: str


class Match(BaseModel):
    identity: str | None
    distance: float
    match: bool
    face_id: int
    box: list[float]


class SearchResult(BaseModel):
    query_box: list[float]
    matches: list[Match]


class SearchOut(BaseModel):
    threshold: float
    results: list[SearchResult]


class IdentitySummary(BaseModel):
    name: str
    created_at: str
    faces: int
    thumbnail_face_id: int | None


class IdentityList(BaseModel):
    total: int
    limit: int
    offset: int
    identities: list[IdentitySummary]


class StoredFace(BaseModel):
    face_id: int
    box: list[float]
    score: float | None
    stage: str | None
    image_sha256: str
    image_width: int | None
    image_height: int | None
    added_at: str
    has_crop: bool


class IdentityDetail(BaseModel):
    name: str
    created_at: str
    faces: list[StoredFace]


class EnrollItem(BaseModel):
    image: int
    status: str
    sha256: str
    faces: int


class EnrollOut(BaseModel):
    name: str
    results: list[EnrollItem]


class DeleteOut(BaseModel):
    name: str
    deleted: bool
    embedding_ids: int
    crop_paths: int
    image_paths: int
    journal_rows: int
    vacuum: str | None = None
    wal_truncated: bool | None = None


class KeyIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[str] = Field(min_length=1, description="any of read, write, admin")


class KeyOut(BaseModel):
    id: str
    name: str
    scopes: list[str]
    created_at: str
    revoked_at: str | None = None
    last_used_at: str | None = None


class KeyCreated(KeyOut):
    key: str = Field(description="the secret, shown only once")


class Health(BaseModel):
    status: str
    detail: str | None = None


class ClipOut(BaseModel):
    run: str = Field(description="the clip model's run folder name")
    label: str = Field(description="the most probable class")
    probability: float = Field(description="its probability")
    probabilities: dict[str, float] = Field(description="every class of the model, summing to 1")
    frames_used: int = Field(description="segment-centre frames sampled from the clip (a frozen "
                             "model with the trajectory or flow set also reads the whole clip at 10 fps)")
    seconds: float = Field(description="decode + model time")

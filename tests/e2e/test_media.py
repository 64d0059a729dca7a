"""End to end: audio and image pass-through with the real `openai` SDK, through TruckLLM,
to the fake Azure resource (deployment URLs for `azure`, the v1 API for an `openai`-type
provider), and a clear 400 when the alias's provider cannot do it."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.azure_fake import SPEECH, multipart_fields
from tests.harness import Stack, make_openai_client

AUDIO = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256))


@pytest.mark.parametrize(("alias", "upstream_path", "upstream_model"), [
    ("az-whisper", "/openai/deployments/whisper-deploy/audio/transcriptions", "whisper-deploy"),
    ("oai-whisper", "/openai/v1/audio/transcriptions", "whisper-1"),
])
async def test_transcription_multipart_passes_through(stack: Stack, alias: str, upstream_path: str,
                                                      upstream_model: str) -> None:
    client = make_openai_client(stack)
    result = await client.audio.transcriptions.create(model=alias, file=("clip.wav", AUDIO, "audio/wav"),
                                                      language="en")
    assert result.text == f"fake transcript of clip.wav ({len(AUDIO)} bytes)"
    sent = stack.azure.requests[-1]
    assert sent.path == upstream_path
    fields = multipart_fields(sent)
    assert fields["model"] == (None, upstream_model.encode())
    assert fields["file"] == ("clip.wav", AUDIO) and fields["language"] == (None, b"en")


async def test_transcription_text_format_keeps_its_content_type(stack: Stack) -> None:
    client = make_openai_client(stack)
    text = await client.audio.transcriptions.create(model="az-whisper", file=("a.wav", AUDIO),
                                                    response_format="text")
    assert str(text).strip() == f"fake transcript of a.wav ({len(AUDIO)} bytes)"


# The openai SDK marks audio translations deprecated; clients still call it, and the
# gateway still passes it through.
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
async def test_translation_passes_through(stack: Stack) -> None:
    client = make_openai_client(stack)
    result = await client.audio.translations.create(model="az-whisper", file=("fr.wav", AUDIO))
    assert result.text.startswith("fake transcript of fr.wav")
    assert stack.azure.requests[-1].path.endswith("/audio/translations")


async def test_speech_streams_binary_audio_back(stack: Stack) -> None:
    client = make_openai_client(stack)
    async with client.audio.speech.with_streaming_response.create(
            model="az-tts", voice="alloy", input="Hello there") as response:
        assert response.headers["content-type"] == "audio/mpeg"
        audio = b"".join([chunk async for chunk in response.iter_bytes()])
    assert audio == SPEECH
    assert stack.azure.requests[-1].body == {"model": "tts-deploy", "voice": "alloy", "input": "Hello there"}


async def test_image_generation_passes_through(stack: Stack) -> None:
    client = make_openai_client(stack)
    result = await client.images.generate(model="az-image", prompt="a sea otter")
    assert result.data is not None and result.data[0].b64_json == "ZmFrZS1pbWFnZQ=="
    assert stack.azure.requests[-1].path == "/openai/deployments/image-deploy/images/generations"


@pytest.mark.parametrize("alias", ["claude", "gem"])
async def test_provider_without_audio_is_a_clear_400(stack: Stack, alias: str) -> None:
    client = make_openai_client(stack)
    with pytest.raises(openai.BadRequestError, match="cannot serve audio_transcriptions"):
        await client.audio.transcriptions.create(model=alias, file=("a.wav", AUDIO))
    with pytest.raises(openai.BadRequestError, match="cannot serve images"):
        await client.images.generate(model=alias, prompt="x")


async def test_upload_without_a_file_is_a_400(stack: Stack) -> None:
    client = make_openai_client(stack)
    with pytest.raises(openai.BadRequestError) as raised:
        await client.post("/audio/transcriptions", cast_to=object,
                          body={"model": "az-whisper"}, files=[("language", ("x", b"en"))],
                          options={"headers": {"Content-Type": "multipart/form-data"}})
    assert raised.value.status_code == 400

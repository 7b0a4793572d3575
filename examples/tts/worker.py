"""Text to speech, streamed: espeak-ng synthesises the text and this handler sends
its WAV audio on as it comes (a chunk per read), so a player can start while the
rest is being made.

    curl -sN localhost:8700/v1/tts/speak -d '{"text": "Hello from paddock."}' -o hello.wav

JSON {"text": "...", "voice": "en", "speed": 175}. When the client disconnects,
paddock sends CANCEL: the generator is closed at its next yield, and its `finally`
stops espeak-ng, so an abandoned request stops costing CPU at once.
"""
import shutil
import subprocess

import paddock


class Speech:
    def setup(self):
        self.espeak = shutil.which("espeak-ng")
        if self.espeak is None:
            raise RuntimeError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")

    @paddock.handler
    def speak(self, req):
        data = req.json()
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise paddock.BadRequest('expected a JSON body {"text": "..."}')
        voice = str(data.get("voice", "en"))
        speed = int(data.get("speed", 175))
        # The text goes on stdin: no length limit, no option injection.
        p = subprocess.Popen([self.espeak, "--stdout", "-v", voice, "-s", str(speed)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            p.stdin.write(text.encode("utf-8"))
            p.stdin.close()
            first = True
            while True:
                audio = p.stdout.read1(32768)  # what is there, as soon as it is
                if not audio:
                    break
                yield paddock.Response(audio, "audio/wav") if first else audio
                first = False
            if p.wait() != 0:
                raise RuntimeError(f"espeak-ng failed: {p.stderr.read().decode(errors='replace')}")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


if __name__ == "__main__":
    paddock.serve(Speech())

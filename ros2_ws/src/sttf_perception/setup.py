from setuptools import find_packages, setup

package_name = "sttf_perception"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="edge_vlm maintainers",
    maintainer_email="maintainers@edge-vlm.dev",
    description="Event frames to change mask / token mask (STTF perception node of edge_vlm).",
    license="Apache-2.0",
    # the node executable is named like the package:
    # install/sttf_perception/lib/sttf_perception/sttf_perception
    entry_points={"console_scripts": ["sttf_perception = sttf_perception.node:main"]},
)
